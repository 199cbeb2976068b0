"""The ``omnifuse`` command line. Each command parses its options and calls one importable function."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from omnifuse import __version__
from omnifuse.demo import DEMO_EPOCHS, DEMO_REPEATS
from omnifuse.experiments.config import AblationConfig, CompareConfig, ImputationConfig, SweepConfig, UnimodalConfig
from omnifuse.extract.config import extract_cli_parameters
from omnifuse.fuse.config import TrainConfig
from omnifuse.options import cli_options, with_parameters

app = typer.Typer(
    name="omnifuse",
    help="Multimodal clinical fusion with missing modalities.\n\n"
    "Stage one (`extract`) runs frozen encoders once and writes a Zarr feature cache; stage two (`train`, "
    "`experiment`) trains OmniFuse and the baselines on the cached tensors in minutes. "
    "Start with `omnifuse demo` (real eICU demo data, bundled).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"omnifuse {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """omnifuse: OmniFuse (CRA + DWFuse + TLA) and baselines on a frozen-encoder feature cache."""


def _fail(e: Exception, code: int = 2) -> None:
    msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    typer.secho(f"error: {msg}", fg="red", err=True)
    raise typer.Exit(code) from e


USER_ERRORS = (ValueError, KeyError, OSError, FloatingPointError)
"""What a command reports as ``error: ...`` with exit code 2 instead of a traceback: refused input or options
(``ValueError`` and its subclasses: ``CacheError``, ``DataError``, ``StudyError``, ``CheckpointError``,
``PredictionError``), unknown names, files that cannot be read or written, a training that diverged."""


@contextmanager
def _reported() -> Iterator[None]:
    """Run the body; :data:`USER_ERRORS` and ``CacheError`` (an unfinished or damaged store, met at load or
    mid-run when features are streamed) become a one-line ``error: ...`` and exit code 2."""
    from omnifuse.cache.schema import CacheError

    try:
        yield
    except (*USER_ERRORS, CacheError) as e:
        _fail(e)


def _setup_logging(verbose: bool) -> None:
    import logging

    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(show_path=False, rich_tracebacks=False)],
        force=True,
    )
    for noisy in ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
@with_parameters(extract_cli_parameters(), config_file=True)
def extract(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at DEBUG level."), **options: Any) -> None:
    """Stage one: run the frozen encoders once and write the feature cache.

    Every option (ExtractConfig and each dataset's own) can also stand in a TOML file given with --config;
    flags override it, and the resolved configuration is saved in the cache. Resumable: run the same command
    again after an interruption and it continues where it stopped. Under `torchrun --nproc-per-node N
    omnifuse extract ...` each rank encodes its own blocks of one store.

    `--add-modality NAME` adds that modality of the dataset to the existing cache --out and encodes only it
    (the other modalities are not rewritten; `--modality-name NEW` keeps the same input under another encoder
    beside the first). Offline, use the bundled `--text-encoder minilm`, `--image-encoder random:resnet34`
    or a local model folder.
    """
    from omnifuse.cache import CacheError
    from omnifuse.extract.run import extract_dataset

    _setup_logging(verbose)
    try:
        summary = extract_dataset(config=options.pop("config"), **options)
    except (CacheError, ValueError, OSError) as e:  # OSError: a file-system error outside the store
        _fail(e)
    from rich.console import Console

    Console().print(summary.render())


def _parse_params(items: list[str] | None) -> dict:
    """``--param key=value`` pairs; values are read as JSON when they parse (numbers, true/false, lists)."""
    out: dict = {}
    for it in items or []:
        if "=" not in it:
            raise typer.BadParameter(f"--param expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


@app.command()
@cli_options(TrainConfig)
def train(
    cache: Path = typer.Option(..., "--cache", "-c", help="Cache written by `omnifuse extract`."),
    param: list[str] | None = typer.Option(
        None,
        "--param",
        "-p",
        help="Method parameter key=value (repeat), "
        "e.g. -p beta=0.5 -p tla=false (OmniFuse ablation switches: "
        "dwfuse, tla, imp_fw, imp_bw).",
    ),
    grid_search: bool = typer.Option(
        False,
        "--grid",
        help="Cross-validated grid over beta, alpha and the "
        "lambdas (or the [grid] table of --config), chosen on inner validation.",
    ),
    out: Path = typer.Option(Path("runs/latest"), "--out", "-o", help="Run folder."),
    **flags: Any,
) -> None:
    """Stage two: train and evaluate a fusion method with patient-grouped cross-validation.

    Writes OUT/config.json (resolved), metrics.json (per fold and mean, per modality combination in both views:
    every test row masked down to it, and the rows holding it), predictions.csv, lazy_combinations.json
    (OmniFuse's TLA trace) and a checkpoint per fold. Every option below is a TrainConfig field; a --config
    TOML file may set them all, and flags override it.
    """
    from omnifuse.fuse.train import grid, print_results
    from omnifuse.fuse.train import train as run_train

    _setup_logging(False)
    kw = dict(flags, out=out, method_params=_parse_params(param) or None)
    with _reported():
        if grid_search:
            res = grid(cache, **kw)
            typer.echo(f"best parameters (mean inner-validation AUROC): {res['best']}; written to {out}/grid.json")
            return
        result = run_train(cache, **kw)
    print_results(result)
    typer.echo(f"run written to {out}")


@app.command()
def predict(
    run: Path = typer.Option(..., "--run", "-r", help="Run folder written by `omnifuse train`."),
    cache: Path = typer.Option(..., "--cache", "-c", help="Cache with the stays to score."),
    out: Path = typer.Option(Path("predictions.csv"), "--out", "-o", help="CSV to write."),
    fold: int | None = typer.Option(
        None, "--fold", help="Use only this fold's model (default: each stay by the fold models not trained on it)."
    ),
    device: str = typer.Option("cpu", "--device"),
    shap: bool = typer.Option(
        True,
        "--shap/--no-shap",
        help="Modality attribution: shap_<modality> columns, each modality's Shapley value for the stay's "
        "calibrated risk (2^M forward passes per stay and fold model, M the stay's modalities).",
    ),
    allow_other_encoders: bool = typer.Option(
        False,
        "--allow-other-encoders",
        help="Score a cache encoded with other encoders, weights or preprocessing than the run's training cache "
        "(experts only: the scores may be wrong).",
    ),
    allow_incomplete: bool = typer.Option(
        False,
        "--allow-incomplete",
        help="Accept a cache whose extraction did not finish (missing blocks read as missing modalities).",
    ),
) -> None:
    """Score stays with a trained run, whatever modalities they have (the cache needs no labels).

    Honest scoring: a stay the run trained on is scored by the fold model(s) that did not train on it
    (column scored_by: out_of_fold:<k>; new stays: all_folds, the mean of the fold models; in_training when
    every model used trained on it, with a warning). Columns: stay_id, the fused probability (calibrated with
    each fold's temperature), scored_by, per modality its own probability and the label-free weight (eq. 10
    computed with the predicted class, since the true label is unknown at inference), its presence and its
    Shapley value (shap_<modality>, with shap_baseline the all-masked prediction: they add up to the score).
    """
    from omnifuse.fuse.predict import honest_summary
    from omnifuse.fuse.predict import predict as run_predict

    with _reported():
        res = run_predict(
            run,
            cache,
            out,
            fold=fold,
            device=device,
            allow_incomplete=allow_incomplete,
            allow_other_encoders=allow_other_encoders,
            shap=shap,
        )
    typer.echo(honest_summary(res["scored_by"]))
    typer.echo(f"scored {len(res['stay_id']):,} stays into {out}")


@app.command()
def methods() -> None:
    """List the registered fusion methods with their source paper."""
    from rich.console import Console
    from rich.table import Table

    from omnifuse.fuse.methods import METHODS

    t = Table(title="fusion methods and their variants (omnifuse train --method NAME)")
    for col in ("name", "variant of", "description", "paper"):
        t.add_column(col)
    for name in sorted(METHODS):
        e = METHODS[name]
        t.add_row(name, e.base if e.kind == "variant" else "", e.description, e.paper)
    Console().print(t)


@app.command()
def demo(
    cache: Path | None = typer.Option(
        None,
        "--cache",
        help="Where the demo cache is built (default cache/eicu-demo-no-exam.zarr; with --all-modalities "
        "cache/eicu-demo.zarr, omnifuse extract's).",
    ),
    out: Path = typer.Option(Path("results/demo"), "--out", "-o", help="Results folder."),
    method: list[str] | None = typer.Option(
        None, "--method", "-m", help="Methods to compare (repeat); default omnifuse, concat, logreg and gbm."
    ),
    folds: int = typer.Option(5, "--folds"),
    repeats: int = typer.Option(
        DEMO_REPEATS, "--repeats", help="Repeats of the cross-validation (folds seeded by seed + r; compare: 3)."
    ),
    seed: int = typer.Option(0, "--seed"),
    epochs: int = typer.Option(
        DEMO_EPOCHS, "--epochs", help="Maximum epochs per network, early stopping within (full comparison: 30)."
    ),
    jobs: int | None = typer.Option(None, "--jobs", help="Runs trained at once (default: one per CPU core)."),
    all_modalities: bool = typer.Option(
        False,
        "--all-modalities",
        help="All eight modalities (default: seven, the exam text left out: its values are exam_values, and "
        "encoding it is over half the extraction).",
    ),
) -> None:
    """The whole pipeline on the bundled eICU-CRD demo (real data, ODbL): extract, then OmniFuse, Concat and the
    two reference learners.

    Patient-grouped 5-fold cross-validation on in-hospital mortality, repeated twice (the first 10 folds of
    `omnifuse experiment compare`'s 15), networks trained for at most 10 epochs (compare: 30 with patience 10;
    a network whose best epoch is below 10 is the same network with the same predictions as in compare, which
    was the case for every OmniFuse and Concat fold of the README's comparison; `--repeats 3 --epochs 30` is
    compare's protocol exactly). Prints AUROC and AUPRC with CIs, calibration and corrected t-tests, and APACHE
    IVa's predicted mortality on the same folds and stays, and writes them to --out. Seven of the eICU demo's
    eight modalities, said in one line: the exam text is left out (its vital signs and GCS are exam_values, and
    encoding it is over half the extraction); --all-modalities uses all eight (cache/eicu-demo.zarr, the cache
    of `omnifuse extract --dataset eicu-demo`). A cache with other modalities is refused. From scratch on 2
    unshared CPU cores: 4 min 16 s measured (extraction 66 s, the 40 runs 2 min 16 s; README); rerunning reuses
    the cache and finished runs.
    """
    from omnifuse.demo import DEMO_METHODS, run_demo

    _setup_logging(False)
    with _reported():
        res = run_demo(
            cache,
            out,
            methods=method or DEMO_METHODS,
            folds=folds,
            repeats=repeats,
            seed=seed,
            epochs=epochs,
            n_jobs=jobs,
            all_modalities=all_modalities,
        )
    typer.echo(f"results written to {res.out} (results.md, results.csv, reliability.png)")


experiment_app = typer.Typer(
    help="Studies of the paper rerun from one cache: compare (table 3), unimodal (table 2), ablation (table 4), "
    "sweep (figures 4-6), imputation (figures 7-8). Each writes config.json, results.csv/json, "
    "results.md and PNG figures into --out, and resumes from the runs it already has.",
    no_args_is_help=True,
)
app.add_typer(experiment_app, name="experiment")


_CACHE = typer.Option(..., "--cache", "-c", help="Cache written by `omnifuse extract`.")
_OPTION = typer.Option(
    None, "--option", help="Training option key=value (a TrainConfig field, e.g. lr=3e-4), repeatable."
)
_PARAM = typer.Option(
    None, "--param", "-p", help="Method parameter method.key=value (e.g. omnifuse.beta=0.25), repeatable."
)


def _method_overrides(items: list[str] | None) -> dict[str, dict]:
    """``--param method.key=value`` pairs as ``{method: {key: value}}``."""
    out: dict[str, dict] = {}
    for k, v in _parse_params(items).items():
        method, dot, key = k.partition(".")
        if not dot or not method or not key:
            raise typer.BadParameter(f"--param expects method.key=value, got {k!r}")
        out.setdefault(method, {})[key] = v
    return out


def _run_study(fn, cache: Path, option: list[str] | None, param: list[str] | None, flags: dict) -> None:
    """Call a study function with the cache, its ``--config`` file and the given flags; a clear error
    (exit 2) for what the study refuses."""
    _setup_logging(False)
    config = flags.pop("config", None)
    with _reported():
        res = fn(
            cache,
            config=config,
            options=_parse_params(option) or None,
            method_overrides=_method_overrides(param) or None,
            **flags,
        )
    typer.echo(f"written to {res.out}")


@experiment_app.command("compare")
@cli_options(CompareConfig)
def experiment_compare(
    cache: Path = _CACHE, option: list[str] | None = _OPTION, param: list[str] | None = _PARAM, **flags: Any
) -> None:
    """Table 3: every method on the same folds and missingness masks, per modality combination; mean ± sd,
    corrected t-tests against OmniFuse and its DWFuse-only row, bootstrap CIs, Brier, reliability figure, and the
    cache's reference score (APACHE IVa on eICU) on the same rows. On the 8-modality eICU demo with --jobs 2
    --threads 1 on 2 quiet cores: the 12 entries of table 3 plus the reference learners at 5 folds x 3 repeats
    13.5 to 18.5 min (host speed varied); all 20 entries at --repeats 1 13 min 41 s (about 38 min at 5 x 3).
    See docs/methods.md."""
    from omnifuse.experiments.compare import compare

    _run_study(compare, cache, option, param, flags)


@experiment_app.command("unimodal")
@cli_options(UnimodalConfig)
def experiment_unimodal(
    cache: Path = _CACHE, option: list[str] | None = _OPTION, param: list[str] | None = _PARAM, **flags: Any
) -> None:
    """Table 2 / figure 2: each modality alone against the fused models given only that modality (modality
    laziness). eICU demo, 5 folds: 12 min measured on 2 shared CPU cores."""
    from omnifuse.experiments.unimodal import unimodal

    _run_study(unimodal, cache, option, param, flags)


@experiment_app.command("ablation")
@cli_options(AblationConfig)
def experiment_ablation(
    cache: Path = _CACHE, option: list[str] | None = _OPTION, param: list[str] | None = _PARAM, **flags: Any
) -> None:
    """Table 4: the OmniFuse network with its components switched on one by one (the registry entries
    ablation_a to ablation_f), per modality combination. eICU demo, 6 rows x 5 folds: 20 min measured on 2
    shared CPU cores."""
    from omnifuse.experiments.ablation import ablation

    _run_study(ablation, cache, option, param, flags)


@experiment_app.command("sweep")
@cli_options(SweepConfig)
def experiment_sweep(
    cache: Path = _CACHE, option: list[str] | None = _OPTION, param: list[str] | None = _PARAM, **flags: Any
) -> None:
    """Figures 4-6: AUROC against the simulated missing rate, with and without imputation. eICU demo, 4 rates x
    3 folds: 24.5 min measured on 2 shared CPU cores (the default 10 rates x 5 folds take about 4 times that)."""
    from omnifuse.experiments.sweep import sweep

    _run_study(sweep, cache, option, param, flags)


@experiment_app.command("imputation")
@cli_options(ImputationConfig)
def experiment_imputation(
    cache: Path = _CACHE, option: list[str] | None = _OPTION, param: list[str] | None = _PARAM, **flags: Any
) -> None:
    """Figures 7-8: cosine similarity of imputed to true embeddings across epochs, and t-SNE maps of real and
    imputed embeddings per modality. eICU demo: 9.7 min measured on 2 shared CPU cores."""
    from omnifuse.experiments.imputation import imputation

    _run_study(imputation, cache, option, param, flags)


@app.command()
def report(
    folder: Path = typer.Argument(
        ..., help="A run folder of `omnifuse train` or a study folder of `omnifuse experiment` (told apart)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Markdown file to write (default FOLDER/report.md); its PNG figures go beside it."
    ),
    attribution: bool = typer.Option(
        True,
        "--attribution/--no-attribution",
        help="A run: compute each modality's Shapley values from the fold checkpoints on the run's cache "
        "(2^M passes per stay and fold model). A study shows the values it stored (compare --attribution).",
    ),
    cache: Path | None = typer.Option(
        None, "--cache", "-c", help="A run: the cache to attribute on (default: the one recorded in its config.json)."
    ),
) -> None:
    """Write one Markdown report of a run or a study that a reviewer can read on its own: configuration and cache
    provenance, data summary, metrics with bootstrap CIs (fold mean and pooled) and corrected t-tests,
    calibration before and after temperature scaling, modality attribution and OmniFuse's TLA trace, with
    figures."""
    from omnifuse.experiments.run_report import write_report

    _setup_logging(False)
    with _reported():
        path = write_report(folder, out, attribution=attribution, cache=cache)
    typer.echo(f"report written to {path}")


@app.command()
def encoders(
    family: str | None = typer.Option(None, "--family", help="Only this family: image, text or volume."),
) -> None:
    """List the registered stage-one encoders: name, aliases, family, source, output shape and licence.

    Any other transformers hub id or local folder also works with --image-encoder / --text-encoder.
    """
    from rich.console import Console
    from rich.table import Table

    from omnifuse.extract.encoders import list_encoders

    try:
        entries = list_encoders(family)
    except ValueError as e:
        _fail(e)
    t = Table(title="stage-one encoders (omnifuse extract --image-encoder / --text-encoder NAME)")
    t.add_column("name", no_wrap=True)
    for col in ("aliases", "family", "source", "output shape", "licence"):
        t.add_column(col, overflow="fold")
    for entry in entries:
        t.add_row(
            entry.name, ", ".join(entry.aliases) or "-", entry.family, entry.source, entry.shape_text(), entry.licence
        )
    Console().print(t)


@app.command()
def info(
    cache: Path = typer.Argument(..., help="Path of a cache written by `omnifuse extract` (a .zarr folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Describe a cache: rows, patients, modalities, missing-modality patterns, labels, size on disk."""
    from omnifuse.cache import CacheError, cache_info, format_info

    try:
        d = cache_info(cache)
    except CacheError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2) from e
    typer.echo(json.dumps(d, indent=2, default=str) if as_json else format_info(d))


if __name__ == "__main__":  # pragma: no cover
    app()

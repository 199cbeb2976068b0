"""The options of every study, declared once (:mod:`omnifuse.options`): defaults, TOML keys, command-line flags
and help come from these dataclasses, and the resolved configuration is saved as ``config.json`` with the
study's results.

:class:`StudyConfig` holds what every study shares; each study adds its own fields in a subclass
(:class:`CompareConfig`, :class:`UnimodalConfig`, :class:`AblationConfig`, :class:`SweepConfig`,
:class:`ImputationConfig`). A study function is ``study(cache, ..., config=None | path | dict | instance,
**overrides)``: defaults < file < keyword overrides. List options accept comma-separated values too
(``--methods omnifuse,concat`` is ``--methods omnifuse --methods concat``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from omnifuse.options import declared, option, resolve, to_json

ConfigT = TypeVar("ConfigT", bound="StudyConfig")

COMBINATIONS_HELP = (
    "Modality combinations evaluated: full+single (all, then each alone), full, single, loo (all, "
    "then each left out), all (2^M - 1) or names such as vitals+apache (repeat)."
)


REPEATS = 3
"""Repeats of k-fold cross-validation in the studies that compare methods (compare, unimodal, ablation): 5 x 3
resampled splits give the corrected resampled t-test 14 degrees of freedom where one 5-fold pass gives 4.
The sweep (10 rates, each its own replication) and the imputation study (one fold) default to 1."""
REPEATS_HELP = "Repeated k-fold: repeat r uses folds seeded by seed + r (the corrected t-test pairs all of them)."


@dataclass
class StudyConfig:
    """Options every study shares."""

    task: str = option("mortality", help="Task in the cache.", short="-t")
    out: Path = option(Path("experiments/study"), help="Results folder (finished runs in it are reused).", short="-o")
    modalities: list[str] | None = option(
        None, help="Modalities the study uses (comma-separated or repeated; default all).", flag="--modalities"
    )
    folds: int = option(5, help="Patient-grouped cross-validation folds.")
    repeats: int = option(1, help="Repeated k-fold: repeat r uses folds seeded by seed + r.")
    seed: int = option(0, help="Seed of the folds, the simulated masks and the runs (omnifuse.fuse.fold).")
    epochs: int | None = option(None, help="Maximum epochs per run (default: the trainer's 30, early stopping).")
    n_jobs: int = option(
        1, help="Runs trained at once (processes); on 2 CPU cores use 2 with --threads 1.", flag="--jobs"
    )
    threads: int | None = option(None, help="Torch threads per run (default: CPU count / jobs; on a cluster 1).")
    backend: str = option(
        "loky",
        help="Where the runs train: loky (processes on this machine, --jobs of them) or dask (the workers of a "
        "Dask cluster, --scheduler; needs omnifuse[cluster]).",
        choices=("loky", "dask"),
    )
    scheduler: str | None = option(
        None,
        help="The Dask scheduler of --backend dask: its address (tcp://host:8786) or its scheduler file "
        "(dask scheduler --scheduler-file FILE). --out and the cache must be on a file system every worker shares.",
    )
    device: str | None = option(None, help="auto (cuda when present), cpu or cuda.")
    n_boot: int = option(200, help="Bootstrap replicates of the confidence intervals (0: none).")
    progress: bool = option(True, help="Show a progress bar (logged when the output is not a terminal).")
    allow_incomplete: bool = option(
        False, help="Accept a cache whose extraction did not finish (its missing blocks read as missing modalities)."
    )
    print_table: bool = option(True, help="Print the tables when done.", cli=False)
    options: dict[str, Any] = option(
        {},
        help="Training options (TrainConfig fields), e.g. {lr = 3e-4}; on the command line --option key=value.",
        cli=False,
    )
    method_overrides: dict[str, dict[str, Any]] = option(
        {},
        help="Method parameters per method or variant, e.g. "
        "{omnifuse = {beta = 0.25}}; on the command line "
        "--param omnifuse.beta=0.25.",
        cli=False,
    )

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise ValueError(f"a cross-validated study needs folds >= 2, got {self.folds}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        if self.n_jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {self.n_jobs}")
        if self.backend == "dask" and not self.scheduler:
            raise ValueError("--backend dask needs --scheduler (tcp://host:8786 or a scheduler file)")
        if self.backend != "dask" and self.scheduler:
            raise ValueError(f"--scheduler is for --backend dask; the backend is {self.backend}")
        for d in declared(type(self)):
            values = getattr(self, d.name)
            if "list[str]" in str(d.type) and isinstance(values, list):
                setattr(self, d.name, [p.strip() for v in values for p in str(v).split(",") if p.strip()])

    def train_options(self) -> dict[str, Any]:
        """The :class:`omnifuse.fuse.config.TrainConfig` options of every run: ``options``, then ``epochs`` and
        ``device`` when given."""
        opts = dict(self.options)
        if self.epochs is not None:
            opts["epochs"] = int(self.epochs)
        if self.device is not None:
            opts["device"] = self.device
        if self.allow_incomplete:
            opts["allow_incomplete"] = True
        return opts

    def to_json(self) -> dict[str, Any]:
        return to_json(self)


@dataclass
class CombinationStudyConfig(StudyConfig):
    """Options of the studies that evaluate modality combinations under an optional simulated missingness."""

    combinations: list[str] = option(["full+single"], help=COMBINATIONS_HELP, flag="--combinations")
    missing_rate: float = option(0.0, help="Simulated missing rate of every test and training row.")
    missing_mode: str = option("random", help="random, or the modality to drop.")


@dataclass
class CompareConfig(CombinationStudyConfig):
    """``omnifuse experiment compare``: every method on the same folds and masks (the paper's table 3)."""

    repeats: int = option(REPEATS, help=REPEATS_HELP)

    out: Path = option(Path("experiments/compare"), help="Results folder (finished runs in it are reused).", short="-o")
    methods: list[str] | None = option(
        None,
        help="Methods or variants (comma-separated or repeated; default every "
        "registered method and the dwfuse_only variant).",
        flag="--methods",
    )
    attribution: bool = option(
        False,
        help="Also store every fusion network's per-stay Shapley values of each modality (2^m predictions per "
        "test stay and run, m its modalities) and summarise them per method and missingness pattern "
        "(attribution.csv, attribution.png); about half the training time again on the eICU demo; runs finished "
        "without them are retrained.",
    )


@dataclass
class UnimodalConfig(StudyConfig):
    """``omnifuse experiment unimodal``: each modality alone against fused models given only it (table 2)."""

    repeats: int = option(REPEATS, help=REPEATS_HELP)

    out: Path = option(
        Path("experiments/unimodal"), help="Results folder (finished runs in it are reused).", short="-o"
    )
    fused: list[str] = option(
        ["concat", "omnifuse", "gbm"],
        help="Fused methods set against the unimodal models (gbm: the gradient-boosting reference learner).",
        flag="--fused",
    )
    unimodal_method: str = option(
        "concat", help="Method of the unimodal models (with one modality: its encoder and a head)."
    )


@dataclass
class AblationConfig(CombinationStudyConfig):
    """``omnifuse experiment ablation``: OmniFuse's components switched on one by one (table 4)."""

    repeats: int = option(REPEATS, help=REPEATS_HELP)

    out: Path = option(
        Path("experiments/ablation"), help="Results folder (finished runs in it are reused).", short="-o"
    )
    rows: list[str] = option(
        ["a", "b", "c", "d", "e", "f"],
        help="Rows of table 4: a none, b +DWFuse, c +TLA, d +IMP-fw, e DWFuse+IMP-fw+IMP-bw (our reading), f all.",
        flag="--rows",
    )


@dataclass
class SweepConfig(StudyConfig):
    """``omnifuse experiment sweep``: AUROC against the simulated missing rate (figures 4-6)."""

    out: Path = option(Path("experiments/sweep"), help="Results folder (finished runs in it are reused).", short="-o")
    rates: list[float] = option(
        [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9], help="Missing rates.", flag="--rates"
    )
    modality: str = option("random", help="random, or the modality to drop.")
    methods: list[str] = option(["omnifuse", "omnifuse_no_imp"], help="Methods or variants.", flag="--methods")
    n_boot: int = option(0, help="Bootstrap replicates of the confidence intervals (0: none).")


@dataclass
class ImputationConfig(StudyConfig):
    """``omnifuse experiment imputation``: imputed against true embeddings across epochs (figures 7-8)."""

    out: Path = option(
        Path("experiments/imputation"), help="Results folder (finished runs in it are reused).", short="-o"
    )
    fold: int = option(0, help="Which fold's model to follow.")
    max_rows: int = option(512, help="Test rows per modality the cosine similarity is measured on.")
    tsne_rows: int = option(300, help="Test rows per modality in the t-SNE map.")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.fold < self.folds:
            raise ValueError(f"fold must be in 0..{self.folds - 1}, got {self.fold}")


def study_config(cls: type[ConfigT], config: Any = None, **overrides: Any) -> ConfigT:
    """:func:`omnifuse.options.resolve` of a study's configuration (``None`` overrides ignored); a single
    string given for a list option (``combinations="all"``) is that one-element list."""
    lists = {d.name for d in declared(cls) if "list[" in str(d.type)}
    over = {
        k: [p.strip() for p in v.split(",") if p.strip()] if k in lists and isinstance(v, str) else v
        for k, v in overrides.items()
    }
    return resolve(cls, config, **over)

"""``omnifuse extract``: a dataset name and its options to an adapter, then the pipeline.

This is the importable function behind the CLI command; it chooses the per-dataset defaults (the offline
MiniLM with mean pooling for eICU, the paper's BERT per-token vectors for MIMIC reports).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnifuse.extract.datasets.registry import build_adapter
from omnifuse.extract.encoders import DEFAULT_IMAGE_ENCODER, default_text_encoder_for
from omnifuse.extract.pipeline import ExtractSummary, extract


def default_cache_path(dataset: str) -> Path:
    return Path("cache") / f"{dataset}.zarr"


def adapter_options(
    dataset: str,
    root: Path | None = None,
    manifest: Path | None = None,
    spec: Path | None = None,
    cxr_root: Path | None = None,
    reports_root: Path | None = None,
    task: str | None = None,
    timestep: float | None = None,
    include_pa: bool = False,
) -> dict[str, Any]:
    """The options each adapter takes, from the CLI's flat set; a flag that the dataset does not use is an
    error (so that a typo is never silently ignored)."""
    opts: dict[str, Any] = {}
    given = {"--manifest": manifest, "--spec": spec, "--cxr-root": cxr_root, "--reports-root": reports_root,
             "--task": task, "--timestep": timestep, "--include-pa": include_pa or None}
    allowed: set[str]
    if dataset == "manifest":
        if manifest is None or spec is None:
            raise ValueError("--dataset manifest needs --manifest FILE and --spec SPEC")
        opts.update(manifest=manifest, spec=spec, root=root)
        allowed = {"--manifest", "--spec"}
    elif dataset == "mimic":
        if root is None:
            raise ValueError("--dataset mimic needs --root DIR (a MIMIC-III or MIMIC-IV folder)")
        opts.update(root=root, cxr_root=cxr_root, reports_root=reports_root, include_pa=include_pa)
        if task is not None:
            opts["task"] = task
        if timestep is not None:
            opts["timestep"] = timestep
        allowed = {"--cxr-root", "--reports-root", "--task", "--timestep", "--include-pa"}
    elif dataset == "eicu":
        opts["root"] = root
        allowed = set()
    elif dataset == "eicu-demo":
        if root is not None:
            raise ValueError("eicu-demo is the bundled copy; for a folder of eICU-CRD use --dataset eicu --root DIR")
        allowed = set()
    else:
        opts["root"] = root
        allowed = set(given)
    unused = [k for k, v in given.items() if v is not None and k not in allowed]
    if unused:
        raise ValueError(f"--dataset {dataset} does not use {', '.join(unused)}")
    return opts


def extract_dataset(
    dataset: str = "eicu-demo",
    out: Path | None = None,
    *,
    root: Path | None = None,
    manifest: Path | None = None,
    spec: Path | None = None,
    cxr_root: Path | None = None,
    reports_root: Path | None = None,
    task: str | None = None,
    timestep: float | None = None,
    include_pa: bool = False,
    image_encoder: str = DEFAULT_IMAGE_ENCODER,
    text_encoder: str | None = None,
    text_pooling: str | None = None,
    max_words: int = 150,
    max_tokens: int = 256,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 32,
    limit: int | None = None,
    num_workers: int | None = None,
    modalities: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractSummary:
    """Build the adapter for ``dataset`` and run the extraction pipeline into ``out``.

    Defaults: ``out`` = ``cache/<dataset>.zarr``; text encoder = the offline MiniLM for eICU, else
    ``bert-base-uncased``; text pooling = ``mean`` for eICU, ``tokens`` (the paper) otherwise.
    """
    opts = adapter_options(dataset, root, manifest, spec, cxr_root, reports_root, task, timestep, include_pa)
    adapter = build_adapter(dataset, **opts)
    out = Path(out) if out is not None else default_cache_path(dataset)
    return extract(
        adapter, out,
        image_encoder=image_encoder,
        text_encoder=text_encoder or default_text_encoder_for(dataset),
        text_pooling=text_pooling or ("mean" if dataset.startswith("eicu") else "tokens"),
        max_words=max_words, max_tokens=max_tokens, device=device, precision=precision,
        batch_size=batch_size, limit=limit, num_workers=num_workers, modalities=modalities,
        overwrite=overwrite, progress=progress,
    )

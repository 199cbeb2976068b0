"""``omnifuse extract``: a configuration (dataset, its options, encoders) to an adapter, then the pipeline.

This is the importable function behind the CLI command. The dataset's options, their check and its default
encoders (the offline MiniLM with mean pooling for eICU, the paper's BERT per-token vectors for MIMIC and
manifests) come from the dataset's declaration in ``omnifuse.extract.datasets.registry``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omnifuse.extract.config import ExtractConfig, default_cache_path, extract_config
from omnifuse.extract.datasets.registry import get_dataset
from omnifuse.extract.pipeline import ExtractSummary, extract


def extract_dataset(
    dataset: str | None = None,
    out: str | Path | None = None,
    *,
    config: ExtractConfig | str | Path | dict[str, Any] | None = None,
    **overrides: Any,
) -> ExtractSummary:
    """Build the adapter of the configured dataset and run the extraction pipeline.

    ``config``: an ``ExtractConfig``, a TOML file or a dict; ``dataset``, ``out`` and ``overrides`` (any
    ``ExtractConfig`` field, or an option of the dataset such as ``root=``) override it. ``out`` defaults to
    ``cache/<dataset>.zarr``. The resolved configuration is saved in the cache (``summary.extract_config``).
    """
    cfg = extract_config(config, dataset=dataset, out=out, **overrides)
    if cfg.out is None:
        cfg.out = default_cache_path(cfg.dataset)
    adapter = get_dataset(cfg.dataset).build_adapter(cfg.dataset_options)
    return extract(adapter, config=cfg)

"""``omnifuse info``: what a cache holds (rows, subjects, modalities, missingness patterns, labels, size)."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.cache import store
from omnifuse.cache.fingerprint import cache_fingerprint
from omnifuse.cache.reader import open_cache


def _dir_size(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):  # a file removed while we walk
                total += os.path.getsize(os.path.join(root, f))
    return total


def cache_info(path: str | Path) -> dict[str, Any]:
    """A JSON-ready description of the cache at ``path``.

    Missing-modality patterns are strings over the modality order, e.g. ``"vitals+apache"``; rows of blocks
    not yet written count as missing and are reported under ``incomplete_rows``. ``fingerprint`` is
    :func:`omnifuse.cache.cache_fingerprint`; ``values_masked`` and ``skipped`` per modality are the whole
    store's counts recorded by ``extract``.
    """
    c = open_cache(path)
    g = c.group
    subj = c.subject_id
    mods = []
    masks = []
    for m in c.spec.modalities:
        incomplete = c.incomplete_rows(m.name)
        mask = np.asarray(store.array(g, f"{m.name}/mask")[:]).astype(bool) & ~incomplete
        masks.append(mask)
        mods.append(
            {
                "name": m.name,
                "kind": m.kind,
                "shape": list(m.shape),
                "dtype": m.dtype,
                "encoder": m.encoder,
                "encoder_hash": m.encoder_hash,
                "present": int(mask.sum()),
                "coverage": float(mask.mean()),
                "incomplete_rows": int(incomplete.sum()),
                "preprocessing": m.preprocessing,
                **{"skipped": {}, "values_masked": {}, **store.total_counts(store.block_counts(g, m.name))},
            }
        )
    names = [m.name for m in c.spec.modalities]
    patterns: Counter[str] = Counter()
    if masks:
        stacked = np.stack(masks, axis=1)
        for row in map(tuple, stacked):
            patterns["+".join(n for n, p in zip(names, row, strict=True) if p) or "(none)"] += 1
    tasks = []
    for t in c.spec.tasks:
        y = np.asarray(store.array(g, f"labels/{t.name}")[:])
        lm = np.asarray(store.array(g, f"labels/{t.name}_mask")[:]).astype(bool)
        if t.kind == "multiclass":
            counts = np.bincount(y[lm], minlength=len(t.classes))
            prev = {cl: float(c_ / max(lm.sum(), 1)) for cl, c_ in zip(t.classes, counts, strict=True)}
        else:
            pos = y[lm].sum(axis=0)
            prev = {cl: float(p / max(lm.sum(), 1)) for cl, p in zip(t.classes, pos, strict=True)}
        tasks.append({"name": t.name, "kind": t.kind, "labelled": int(lm.sum()), "prevalence": prev})
    refs = {r: int(np.asarray(store.array(g, f"reference/{r}_mask")[:]).sum()) for r in c.spec.references}
    return {
        "path": str(c.path),
        "schema_version": c.meta["schema_version"],
        "dataset": c.spec.dataset,
        "dataset_version": c.spec.dataset_version,
        "rows": c.n,
        "subjects": int(np.unique(subj).size),
        "modalities": mods,
        "patterns": dict(patterns.most_common()),
        "tasks": tasks,
        "references": refs,
        "splits": list(c.spec.splits),
        "finalized": bool(c.meta.get("finalized", False)),
        "created": c.meta.get("created"),
        "software": c.meta.get("software", {}),
        "license": c.spec.license,
        "adapter_options": c.spec.adapter_options,
        "extra": c.spec.extra,
        "summary": c.meta.get("summary", {}),
        "size_bytes": _dir_size(c.path),
        "fingerprint": cache_fingerprint(c),
    }


def format_info(info: dict[str, Any]) -> str:
    """A human-readable rendering of :func:`cache_info`."""
    lines = [
        f"{info['path']}: {info['dataset']} {info['dataset_version']} (schema v{info['schema_version']}"
        f"{'' if info['finalized'] else ', NOT finalized: extraction incomplete'})",
        f"rows {info['rows']:,}  subjects {info['subjects']:,}  size on disk {info['size_bytes'] / 1e6:.1f} MB",
        "",
        f"{'modality':<14}{'kind':<11}{'shape':<14}{'dtype':<9}{'present':>9}{'coverage':>10}  encoder",
    ]
    for m in info["modalities"]:
        shape = "x".join(map(str, m["shape"]))
        lines.append(
            f"{m['name']:<14}{m['kind']:<11}{shape:<14}{m['dtype']:<9}{m['present']:>9,}"
            f"{m['coverage']:>10.1%}  {m['encoder'] or '-'}"
            + (f"  ({m['incomplete_rows']} rows not written)" if m["incomplete_rows"] else "")
        )
    masked = [(m["name"], m["values_masked"]) for m in info["modalities"] if m.get("values_masked")]
    skipped = [(m["name"], m["skipped"]) for m in info["modalities"] if m.get("skipped")]
    if masked or skipped:
        lines += ["", "inputs masked at extraction (whole store)"]
        for name, counts in skipped:
            lines.append(f"  {name}: rows skipped: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        for name, counts in masked:
            lines.append(f"  {name}: values masked: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
    lines += ["", "missing-modality patterns (present modalities: rows)"]
    for p, c in info["patterns"].items():
        lines.append(f"  {p:<60}{c:>8,}")
    if info["tasks"]:
        lines += ["", "tasks"]
        for t in info["tasks"]:
            prev = ", ".join(f"{k} {v:.1%}" for k, v in list(t["prevalence"].items())[:6])
            more = " ..." if len(t["prevalence"]) > 6 else ""
            lines.append(f"  {t['name']} ({t['kind']}): {t['labelled']:,} labelled; {prev}{more}")
    if info["references"]:
        lines += [
            "",
            "reference scores (not inputs): " + ", ".join(f"{k} on {v:,} rows" for k, v in info["references"].items()),
        ]
    if info["splits"]:
        lines.append("splits: " + ", ".join(info["splits"]))
    extra = info.get("extra", {})
    cohort = extra.get("cohort_rules") or extra.get("cohort") or info.get("summary", {}).get("cohort")
    if cohort:
        lines += ["", "cohort rules (stays excluded by each rule, in order)"]
        if isinstance(cohort, dict):
            lines += [f"  {k}: {v}" for k, v in cohort.items()]
        else:
            for r in cohort:
                if isinstance(r, dict) and "rule" in r:
                    lines.append(f"  {r['rule']}: -{r.get('excluded', '?')} -> {r.get('remaining', '?')}")
                else:
                    lines.append(f"  {r}")
    if info["license"]:
        lines += ["", f"licence: {info['license']}"]
    fp = info["fingerprint"]
    lines += ["", f"fingerprint {fp['digest']}", f"encoders    {fp['encoders_digest']}"]
    return "\n".join(lines)

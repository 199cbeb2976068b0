"""The ``treatments`` modality: tabular ``[F]`` float32 per stay, day-1 treatment indicators.

- ``tx_*`` from ``treatment`` (care-plan treatment entries, ``treatmentoffset`` in the window): 1 when an
  entry's ``treatmentstring`` matches the indicator's pattern (``variables.TREATMENT_PATTERNS``), else 0;
  ``tx_n_distinct`` counts the distinct treatment strings. The ``activeupondischarge`` flag, set at
  discharge, is never read.
- ``inf_*`` from ``infusionDrug`` (``infusionoffset`` in the window): 1 when an infusion of the agent
  (``variables.INFUSION_AGENTS``, matched on ``drugname``) is charted with a rate that is not 0 or negative
  (a charted 0 says the infusion is off; an empty rate counts), else 0; ``inf_vasopressor`` and
  ``inf_inotrope`` are any of their agents, ``inf_n_vasoactive`` counts the distinct vasopressor and
  inotrope agents.

Each table's columns are NaN for a stay without any row of that table in the window: whether a unit charts
treatments or infusions in eICU varies between hospitals, so no row is not the same as "not given". Rows
before unit admission (negative offsets) are not read. A stay is present when it has a row of either table
in the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import in_window, integer, num, require, scan, text
from omnifuse.extract.datasets.eicu.tabular import Column, binary, tabular_modality, to_matrix

TREATMENT_COLUMNS = ["patientunitstayid", "treatmentoffset", "treatmentstring"]
INFUSION_COLUMNS = ["patientunitstayid", "infusionoffset", "drugname", "drugrate"]
N_VASOACTIVE = len({a for agents in variables.INFUSION_GROUPS.values() for a in agents})


def treatment_columns() -> list[Column]:
    """The columns of ``treatments``, in order."""
    cols = [
        binary(name, "0/1 (no treatment row in the window: missing)", f"treatment.treatmentstring ~ /{inc}/")
        for name, (inc, _) in variables.TREATMENT_PATTERNS.items()
    ]
    cols.append(Column(variables.TREATMENT_COUNT, "numeric:log", "count", 0, None, source="treatment.treatmentstring"))
    cols += [
        binary(name, "0/1 (no infusion row in the window: missing)", f"infusionDrug.drugname ~ /{rx}/")
        for name, rx in variables.INFUSION_AGENTS.items()
    ]
    cols += [
        binary(name, "0/1 (no infusion row in the window: missing)", f"infusionDrug: any of {', '.join(agents)}")
        for name, agents in variables.INFUSION_GROUPS.items()
    ]
    cols.append(Column(variables.INFUSION_COUNT, "numeric", "agents", 0, N_VASOACTIVE, source="infusionDrug.drugname"))
    return cols


def _matches(col: str, include: str, exclude: str | None) -> pl.Expr:
    s = text(col)
    m = s.str.contains(f"(?i){include}")
    if exclude is not None:
        m = m & ~s.str.contains(f"(?i){exclude}")
    return m


def treatment_frame(path: Path) -> pl.DataFrame:
    """``stay`` and the ``tx_*`` columns of every stay with a treatment row in the window."""
    lf = scan(path)
    require(lf, "treatment", TREATMENT_COLUMNS)
    flags = {
        name: _matches("treatmentstring", inc, exc).any().cast(pl.Float64)
        for name, (inc, exc) in variables.TREATMENT_PATTERNS.items()
    }
    return (
        lf.filter(in_window(integer("treatmentoffset")))
        .group_by(stay=integer("patientunitstayid"))
        .agg(**flags, **{variables.TREATMENT_COUNT: text("treatmentstring").n_unique().cast(pl.Float64)})
        .collect()
    )


def infusion_frame(path: Path) -> pl.DataFrame:
    """``stay`` and the ``inf_*`` columns of every stay with an infusionDrug row in the window."""
    lf = scan(path)
    require(lf, "infusionDrug", INFUSION_COLUMNS)
    running = ~(num("drugrate") <= 0).fill_null(False)
    agents = {
        name: (_matches("drugname", rx, None) & running).any().cast(pl.Float64)
        for name, rx in variables.INFUSION_AGENTS.items()
    }
    df = lf.filter(in_window(integer("infusionoffset"))).group_by(stay=integer("patientunitstayid")).agg(**agents)
    groups = {name: pl.max_horizontal(list(members)) for name, members in variables.INFUSION_GROUPS.items()}
    vasoactive = sorted({a for members in variables.INFUSION_GROUPS.values() for a in members})
    return df.with_columns(**groups, **{variables.INFUSION_COUNT: pl.sum_horizontal(vasoactive)}).collect()


def build_treatments(tables: dict[str, Path], stay_index: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, RawModality]:
    """float32 [N, F] (NaN: no row of that column's table in the window), bool [N] present, and the
    modality description. Needs ``treatment`` or ``infusionDrug`` in ``tables``."""
    columns = treatment_columns()
    parts = []
    if "treatment" in tables:
        parts.append(treatment_frame(tables["treatment"]))
    if "infusionDrug" in tables:
        parts.append(infusion_frame(tables["infusionDrug"]))
    frame = pl.concat([p.select("stay") for p in parts]).unique()
    for p in parts:
        frame = frame.join(p, on="stay", how="left")
    for c in columns:
        if c.name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(c.name))
    x = to_matrix(frame, columns, stay_index)
    present = np.zeros(stay_index.height, bool)
    present[frame.join(stay_index, on="stay", how="inner")["row"].to_numpy()] = True
    raw = tabular_modality(
        "treatments",
        columns,
        {
            "patterns": {k: {"match": inc, "unless": exc} for k, (inc, exc) in variables.TREATMENT_PATTERNS.items()},
            "infusion_agents": dict(variables.INFUSION_AGENTS),
            "infusion_groups": {k: list(v) for k, v in variables.INFUSION_GROUPS.items()},
            "tables": sorted(t for t in ("treatment", "infusionDrug") if t in tables),
        },
    )
    return x, present, raw

"""The ``care_limitation`` modality (opt-in, ``care_limitation=True``): tabular ``[F]`` float32 per stay.

Code status charted in ``carePlanGeneral`` (``cplgroup == "Care Limitation"``, ``cplitemoffset`` in the
window): full therapy, do not resuscitate (or no CPR), comfort measures only, any other limitation (no
intubation, cardioversion, vasopressors, augmentation of care or blood products); each 1 when any entry
of the window says so (``variables.CARE_LIMITATION_VALUES``), else 0. It encodes a clinician's decision
that predicts death (comfort care is often the step before it), so it is never read unless asked for;
models that use it predict partly what clinicians decided. The ``activeupondischarge`` flag is never read.
A stay is present when it has a Care Limitation entry in the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.extract.datasets.base import RawModality
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import in_window, integer, require, scan, text
from omnifuse.extract.datasets.eicu.tabular import Column, binary, tabular_modality, to_matrix

CARE_PLAN_COLUMNS = ["patientunitstayid", "cplitemoffset", "cplgroup", "cplitemvalue"]


def care_limitation_columns() -> list[Column]:
    """The columns of ``care_limitation``, in order."""
    return [
        binary(name, "0/1", f"carePlanGeneral Care Limitation: {' or '.join(values)}")
        for name, values in variables.CARE_LIMITATION_VALUES.items()
    ]


def build_care_limitation(path: Path, stay_index: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, RawModality]:
    """float32 [N, F] (0/1; NaN for stays without an entry), bool [N] present, the modality description."""
    lf = scan(path)
    require(lf, "carePlanGeneral", CARE_PLAN_COLUMNS)
    columns = care_limitation_columns()
    flags = {
        name: text("cplitemvalue").is_in(list(values)).any().cast(pl.Float64)
        for name, values in variables.CARE_LIMITATION_VALUES.items()
    }
    frame = (
        lf.filter(in_window(integer("cplitemoffset")) & (text("cplgroup") == variables.CARE_LIMITATION_GROUP))
        .group_by(stay=integer("patientunitstayid"))
        .agg(**flags)
        .collect()
    )
    x = to_matrix(frame, columns, stay_index)
    present = np.zeros(stay_index.height, bool)
    present[frame.join(stay_index, on="stay", how="inner")["row"].to_numpy()] = True
    raw = tabular_modality(
        "care_limitation",
        columns,
        {
            "warning": "a clinician's decision (code status) that predicts death; read only when asked for",
            "values": {k: list(v) for k, v in variables.CARE_LIMITATION_VALUES.items()},
        },
    )
    return x, present, raw

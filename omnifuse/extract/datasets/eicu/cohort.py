"""The eICU cohort: one row per ICU stay of ``patient``, grouped by ``uniquepid``; the mortality label and
the APACHE IVa reference score.

Task ``mortality`` (binary, class ``expired``): hospital discharge status; stays without one are kept with
the label masked. Reference ``apache_iva``: APACHE IVa predicted hospital mortality (never an input).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.cache.schema import TaskSpec
from omnifuse.extract.datasets.base import Cohort
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.readers import TABLE_NAMES, EicuDataError, integer, num, require, scan, text

log = logging.getLogger(__name__)

PATIENT_COLUMNS = [
    "patientunitstayid",
    "uniquepid",
    "hospitaldischargestatus",
    "gender",
    "age",
    "admissionheight",
    "admissionweight",
    "unittype",
    "unitadmitsource",
    "unitstaytype",
    "hospitaladmitsource",
    "hospitaladmitoffset",
    "unitvisitnumber",
]


def read_patients(path: Path) -> pl.DataFrame:
    """The ``patient`` table sorted by stay: stay, uniquepid, status and the raw admission columns the apache
    and admission modalities read (never a discharge column but the status, which is the label).
    ``EicuDataError`` for a stay id that is missing or repeated, or a stay without uniquepid."""
    lf = scan(path)
    require(lf, "patient", PATIENT_COLUMNS)
    pat = (
        lf.select(
            stay=integer("patientunitstayid"),
            uniquepid=text("uniquepid"),
            status=text("hospitaldischargestatus"),
            gender="gender",
            age="age",
            admissionheight="admissionheight",
            admissionweight="admissionweight",
            unittype="unittype",
            unitadmitsource="unitadmitsource",
            unitstaytype="unitstaytype",
            hospitaladmitsource="hospitaladmitsource",
            hospitaladmitoffset="hospitaladmitoffset",
            unitvisitnumber="unitvisitnumber",
        )
        .collect()
        .sort("stay")
    )
    if pat["stay"].null_count():
        raise EicuDataError("patient table has rows without a numeric patientunitstayid")
    if pat["stay"].n_unique() != pat.height:
        raise EicuDataError("patient table repeats patientunitstayid values")
    if (pat["uniquepid"] == "").any():
        raise EicuDataError("patient table has stays without uniquepid (needed for patient-grouped splits)")
    return pat


def stay_rows(pat: pl.DataFrame) -> pl.DataFrame:
    """stay -> row (its position in the cohort)."""
    return pat.select("stay", row=pl.int_range(0, pat.height, dtype=pl.Int64))


def mortality_labels(status: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """y float32 [N, 1] (1 = Expired) and mask bool [N] (Expired or Alive; anything else is unlabelled)."""
    y = (status == "Expired").to_numpy().astype(np.float32).reshape(len(status), 1)
    mask = status.is_in(["Expired", "Alive"]).to_numpy()
    other = sorted(set(status.filter(~status.is_in(["Expired", "Alive", ""])).to_list()))
    if other:
        log.warning("eICU: hospitaldischargestatus values %s read as unlabelled", other)
    return y, mask


def apache_iva_reference(tables: dict[str, Path], stay_index: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """APACHE IVa predicted hospital mortality float32 [N] (0 where absent) and its mask bool [N]: the first
    IVa row per stay, kept when within [0, 1] (-1 means not computed)."""
    n = stay_index.height
    ref = np.zeros(n, np.float32)
    ref_mask = np.zeros(n, bool)
    if "apachePatientResult" not in tables:
        return ref, ref_mask
    lf = scan(tables["apachePatientResult"])
    require(
        lf,
        "apachePatientResult",
        ["patientunitstayid", "apachepatientresultsid", "apacheversion", "predictedhospitalmortality"],
    )
    iva = (
        lf.filter(text("apacheversion") == "IVa")
        .select(
            stay=integer("patientunitstayid"),
            ord=integer("apachepatientresultsid"),
            p=num("predictedhospitalmortality"),
        )
        .collect()
        .sort("stay", "ord")
        .unique(subset="stay", keep="first", maintain_order=True)
        .join(stay_index, on="stay", how="inner")
        .filter(pl.col("p").is_between(0.0, 1.0, closed="both"))
    )
    r = iva["row"].to_numpy()
    ref[r] = iva["p"].to_numpy().astype(np.float32)
    ref_mask[r] = True
    return ref, ref_mask


def build_cohort(tables: dict[str, Path], pat: pl.DataFrame, stay_index: pl.DataFrame) -> Cohort:
    """Keys, the mortality task, the APACHE IVa reference, and the counts shown by ``omnifuse info``."""
    n = pat.height
    status = pat["status"]
    y, ymask = mortality_labels(status)
    ref, ref_mask = apache_iva_reference(tables, stay_index)
    extra: dict = {
        "stays": n,
        "patients": int(pat["uniquepid"].n_unique()),
        "expired": int((status == "Expired").sum()),
        "alive": int((status == "Alive").sum()),
        "unlabelled": int((~ymask).sum()),
        "apache_iva_valid": int(ref_mask.sum()),
        "tables_present": sorted(tables),
        "tables_absent": [x for x in TABLE_NAMES if x not in tables],
        "window_min": [0, variables.WINDOW_MIN],
    }
    return Cohort(
        stay_id=pat["stay"].to_numpy().astype(np.int64),
        subject_id=np.array(pat["uniquepid"].to_list(), dtype=str),
        tasks=[TaskSpec("mortality", "binary", ["expired"])],
        labels={"mortality": (y, ymask)},
        references={"apache_iva": (ref, ref_mask)},
        extra=extra,
    )

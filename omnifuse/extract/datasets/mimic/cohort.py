"""ICU-stay cohort, labels and splits of mimic3-benchmarks (and MedFuse's MIMIC-IV port), with rule counts.

Root rules, in the benchmark's order (each logged with how many stays it excluded):
1. ICU stays with an in-time, out-time and length of stay;
2. no transfer between care units (MIMIC-III: same first/last care unit and ward; MIMIC-IV: same care unit);
3. the stay's admission and patient exist;
4. the admission has exactly one ICU stay left after rule 2;
5. age at ICU admission >= 18 (MIMIC-IV: anchor_age + year(intime) - anchor_year; the stays on which MedFuse's
   rule, anchor_age >= 18, decides otherwise are counted in the rule's log entry);
6. at least one usable event of the 17 variables between ICU admission and ICU discharge (applied after
   the events are read, ``events.py``).
"""

from __future__ import annotations

import gzip
from importlib import resources

import numpy as np
import polars as pl

from omnifuse.extract.datasets.mimic.ccs import PHENOTYPE_MAPS, PHENOTYPES, load_ccs_table, load_medfuse_table
from omnifuse.extract.datasets.mimic.readers import MimicLayout


def _dt(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().str.to_datetime(strict=False, time_unit="us")


def _int(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().cast(pl.Float64, strict=False).cast(pl.Int64)


def base_stays(layout: MimicLayout) -> tuple[pl.DataFrame, list[dict]]:
    """Stays passing root rules 1-5, one row per stay sorted by stay_id, and the rule log.

    Columns: subject_id, hadm_id, stay_id (int64), intime, outtime, admittime, dischtime, deathtime, dod
    (datetime), los_h (float, hours), age (float, years), mortality (int8, in-hospital death).
    """
    iii = layout.version == "mimic-iii"
    cols = ["subject_id", "hadm_id", "stay_id", "first_careunit", "last_careunit", "intime", "outtime", "los"]
    if iii:
        cols += ["first_wardid", "last_wardid"]
    st = layout.read("icustays", cols).with_columns(
        _int("subject_id"),
        _int("hadm_id"),
        _int("stay_id"),
        _dt("intime"),
        _dt("outtime"),
        pl.col("los").str.strip_chars().cast(pl.Float64, strict=False),
    )
    log: list[dict] = []

    def step(df: pl.DataFrame, rule: str, before: int) -> pl.DataFrame:
        log.append({"rule": rule, "excluded": before - df.height, "remaining": df.height})
        return df

    n0 = st.height
    log.append({"rule": "ICU stays in the source", "excluded": 0, "remaining": n0})
    st = step(
        st.filter(
            pl.col("intime").is_not_null()
            & pl.col("outtime").is_not_null()
            & pl.col("los").is_not_null()
            & pl.col("hadm_id").is_not_null()
        ),
        "missing intime, outtime, length of stay or admission id",
        n0,
    )
    n = st.height
    same = pl.col("first_careunit") == pl.col("last_careunit")
    if iii:
        same = same & (pl.col("first_wardid") == pl.col("last_wardid"))
    st = step(st.filter(same.fill_null(False)), "transfer between ICU units or wards", n)
    adm_cols = ["subject_id", "hadm_id", "admittime", "dischtime", "deathtime"]
    adm = layout.read("admissions", adm_cols).with_columns(
        _int("subject_id"), _int("hadm_id"), _dt("admittime"), _dt("dischtime"), _dt("deathtime")
    )
    pat_cols = ["subject_id", "dob", "dod"] if iii else ["subject_id", "anchor_age", "anchor_year", "dod"]
    pat = layout.read("patients", pat_cols).with_columns(_int("subject_id"), _dt("dod"))
    pat = pat.with_columns(_dt("dob")) if iii else pat.with_columns(_int("anchor_age"), _int("anchor_year"))
    n = st.height
    st = st.join(adm, on=["subject_id", "hadm_id"], how="inner").join(pat, on="subject_id", how="inner")
    st = step(st, "no admission or patient record", n)
    n = st.height
    per_adm = st.group_by("hadm_id").agg(pl.len().alias("_n"))
    st = st.join(per_adm, on="hadm_id").filter(pl.col("_n") == 1).drop("_n")
    st = step(st, "admission with more than one ICU stay", n)
    if iii:
        age = (pl.col("intime") - pl.col("dob")).dt.total_seconds() / (3600.0 * 24.0 * 365.0)
    else:
        age = (pl.col("anchor_age") + pl.col("intime").dt.year() - pl.col("anchor_year")).cast(pl.Float64)
    st = st.with_columns(age.alias("age"))
    st = st.with_columns(pl.when(pl.col("age") < 0).then(90.0).otherwise(pl.col("age")).alias("age"))
    n = st.height
    # MedFuse (mimic4extract mimic3csv.add_age_to_icustays, filter_icustays_on_age) keeps anchor_age >= 18: the
    # age in the anchor year, not at the stay. Count the stays on which the two rules decide otherwise.
    medfuse_rule = (pl.col("anchor_age") >= 18) != (pl.col("age") >= 18)
    differs = 0 if iii else int(st.select(medfuse_rule.sum()).item())
    st = step(st.filter(pl.col("age") >= 18), "age < 18 at ICU admission", n)
    if not iii:
        log[-1]["medfuse_anchor_age_rule_differs"] = differs
    died = (
        pl.col("dod").is_not_null() & (pl.col("admittime") <= pl.col("dod")) & (pl.col("dischtime") >= pl.col("dod"))
    ) | (
        pl.col("deathtime").is_not_null()
        & (pl.col("admittime") <= pl.col("deathtime"))
        & (pl.col("dischtime") >= pl.col("deathtime"))
    )
    st = st.with_columns(died.fill_null(False).cast(pl.Int8).alias("mortality"), (pl.col("los") * 24.0).alias("los_h"))
    st = st.select(
        "subject_id",
        "hadm_id",
        "stay_id",
        "intime",
        "outtime",
        "admittime",
        "dischtime",
        "deathtime",
        "dod",
        "los_h",
        "age",
        "mortality",
    ).sort("stay_id")
    return st, log


def phenotype_labels(
    layout: MimicLayout, hadm_ids: np.ndarray, phenotype_map: str = "medfuse"
) -> tuple[np.ndarray, dict]:
    """[N, 25] 0/1 labels of the admissions ``hadm_ids`` from their ICD-9 and ICD-10 diagnoses.

    As the benchmark, only codes present in the diagnosis dictionary (d_icd_diagnoses) count. MIMIC-III: the
    benchmark's ICD-9-CM lists, whatever ``phenotype_map``. MIMIC-IV, ``phenotype_map="medfuse"``: MedFuse's
    rules (``extract_subjects_iv`` and ``create_phenotyping``): the dictionary is joined on the code's text
    alone, and the code's text is looked up in ``ccs.load_medfuse_table`` whatever its ICD version;
    ``"gem"``: codes joined on (version, code) to the dictionary and to ``ccs.load_ccs_table``.
    Returns (labels float32, stats: the map, rows per ICD version, admissions with any ICD-10 row).
    """
    if phenotype_map not in PHENOTYPE_MAPS:
        raise ValueError(f"phenotype map must be one of {PHENOTYPE_MAPS}, got {phenotype_map!r}")
    dx = layout.read("diagnoses_icd", ["hadm_id", "icd_code", "icd_version"]).with_columns(
        _int("hadm_id"), pl.col("icd_code").str.strip_chars(), pl.col("icd_version").str.strip_chars().cast(pl.Int8)
    )
    dx = dx.filter(pl.col("hadm_id").is_in(pl.Series(hadm_ids, dtype=pl.Int64).implode()))
    iv = layout.version == "mimic-iv"
    by_text = not iv or phenotype_map == "medfuse"
    dcols = ["icd_code"] if by_text else ["icd_code", "icd_version"]
    d = layout.read("d_icd_diagnoses", ["icd_code", "icd_version"] if iv else ["icd_code"]).with_columns(
        pl.col("icd_code").str.strip_chars()
    )
    if iv:
        d = d.with_columns(pl.col("icd_version").str.strip_chars().cast(pl.Int8))
    n_before = dx.height
    dx = dx.join(d.select(dcols).unique(), on=dcols, how="inner")
    if not iv:
        ccs = load_ccs_table().filter(pl.col("icd_version") == 9).select("icd_code", "group")
        hit = dx.join(ccs, on="icd_code", how="inner")
    elif phenotype_map == "medfuse":
        hit = dx.join(load_medfuse_table(), on="icd_code", how="inner")
    else:
        hit = dx.join(load_ccs_table(), on=["icd_version", "icd_code"], how="inner")
    hit = hit.select("hadm_id", "group").unique()
    pos = {h: i for i, h in enumerate(hadm_ids.tolist())}
    gpos = {g: j for j, g in enumerate(PHENOTYPES)}
    y = np.zeros((len(hadm_ids), len(PHENOTYPES)), dtype=np.float32)
    for h, g in hit.iter_rows():
        y[pos[h], gpos[g]] = 1.0
    stats = {
        "phenotype_map": phenotype_map if iv else "benchmark ICD-9-CM lists",
        "diagnosis_rows": int(n_before),
        "diagnosis_rows_not_in_dictionary": int(n_before - dx.height),
        "icd9_rows": int((dx["icd_version"] == 9).sum()),
        "icd10_rows": int((dx["icd_version"] == 10).sum()),
        "admissions_with_icd10": int(dx.filter(pl.col("icd_version") == 10)["hadm_id"].n_unique()),
    }
    return y, stats


def _read_flags(name: str) -> dict[int, int]:
    path = resources.files("omnifuse") / "data" / "mimic_splits" / name
    out: dict[int, int] = {}
    with resources.as_file(path) as p, gzip.open(p, "rt") as f:
        for line in f:
            a, b = line.strip().split(",")
            out[int(a)] = int(b)
    return out


def benchmark_split(version: str, subject_ids: np.ndarray) -> tuple[np.ndarray, dict]:
    """The published patient-level split: "train" / "val" / "test" per row.

    MIMIC-III: mimic3-benchmarks' lists; MIMIC-IV: MedFuse's lists. Subjects not listed as test are train
    (the benchmark's rule), val when the validation list says so. Returns (split [N] str, stats).
    """
    tag = "mimic3" if version == "mimic-iii" else "mimic4"
    test = _read_flags(f"{tag}_testset.csv.gz")
    val = _read_flags(f"{tag}_valset.csv.gz")
    out = np.empty(len(subject_ids), dtype=object)
    unlisted = 0
    for i, s in enumerate(int(x) for x in subject_ids):
        if s not in test:
            unlisted += 1
        if test.get(s, 0) == 1:
            out[i] = "test"
        elif val.get(s, 0) == 1:
            out[i] = "val"
        else:
            out[i] = "train"
    return out.astype(str), {"source": f"{tag} lists (docs/mimic.md)", "rows_of_unlisted_subjects": unlisted}

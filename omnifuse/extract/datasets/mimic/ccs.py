"""The 25 HCUP CCS phenotype groups of mimic3-benchmarks, for ICD-9-CM and ICD-10-CM diagnosis codes.

Package data ``omnifuse/data/ccs/ccs_benchmark_groups.csv`` (columns ``icd_version, icd_code, group``) holds
the table; ``omnifuse/data/ccs/README.md`` names its sources and how it was derived (``build_ccs_table``).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import polars as pl

PHENOTYPES: list[str] = [
    "Acute and unspecified renal failure",
    "Acute cerebrovascular disease",
    "Acute myocardial infarction",
    "Cardiac dysrhythmias",
    "Chronic kidney disease",
    "Chronic obstructive pulmonary disease and bronchiectasis",
    "Complications of surgical procedures or medical care",
    "Conduction disorders",
    "Congestive heart failure; nonhypertensive",
    "Coronary atherosclerosis and other heart disease",
    "Diabetes mellitus with complications",
    "Diabetes mellitus without complication",
    "Disorders of lipid metabolism",
    "Essential hypertension",
    "Fluid and electrolyte disorders",
    "Gastrointestinal hemorrhage",
    "Hypertension with complications and secondary hypertension",
    "Other liver diseases",
    "Other lower respiratory disease",
    "Other upper respiratory disease",
    "Pleurisy; pneumothorax; pulmonary collapse",
    "Pneumonia (except that caused by tuberculosis or sexually transmitted disease)",
    "Respiratory failure; insufficiency; arrest (adult)",
    "Septicemia (except in labor)",
    "Shock",
]
"""The benchmark's 25 groups, in its label order (alphabetical, as its phenotyping listfile)."""


def build_ccs_table(definitions_yaml: str | Path, icd10_to_icd9_gem: str | Path) -> pl.DataFrame:
    """Derive the shipped table from the benchmark's ICD-9 group lists and the CMS ICD-10-CM -> ICD-9-CM GEM.

    ICD-9 rows: every code the benchmark lists for a group with ``use_in_benchmark: true``.
    ICD-10 rows, from the GEM (entries flagged "no map" dropped): a combination entry's targets all hold
    together, so each target's group is given; the targets of plain entries are alternatives, so the code takes
    the group(s) with the most votes among them (a target outside the 25 groups votes for "none").
    Returns columns ``icd_version`` (int8), ``icd_code`` (str, no dot), ``group`` (str).
    """
    import yaml

    with open(definitions_yaml) as f:
        defs = yaml.safe_load(f)
    icd9: dict[str, str] = {}
    for group, d in defs.items():
        if not d.get("use_in_benchmark"):
            continue
        if group not in PHENOTYPES:
            raise ValueError(f"group {group!r} of {definitions_yaml} is not one of the 25 benchmark groups")
        for code in d["codes"]:
            icd9[str(code)] = group
    rows: set[tuple[int, str, str]] = {(9, c, g) for c, g in icd9.items()}
    alternatives: dict[str, list[str | None]] = {}
    with open(icd10_to_icd9_gem) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 3 or len(parts[2]) != 5:
                continue
            src, dst, flags = parts
            if flags[1] == "1":  # "no map"
                continue
            if flags[2] == "1":  # combination: the ICD-10 code means all of its targets together
                if dst in icd9:
                    rows.add((10, src, icd9[dst]))
            else:  # plain entries with several targets are alternatives: majority vote below
                alternatives.setdefault(src, []).append(icd9.get(dst))
    for src, groups in alternatives.items():
        votes: dict[str | None, int] = {}
        for g in groups:
            votes[g] = votes.get(g, 0) + 1
        top = max(votes.values())
        for g, v in votes.items():
            if g is not None and v == top:
                rows.add((10, src, g))
    df = pl.DataFrame(
        sorted(rows), schema={"icd_version": pl.Int8, "icd_code": pl.Utf8, "group": pl.Utf8}, orient="row"
    )
    return df


@lru_cache(maxsize=1)
def load_ccs_table() -> pl.DataFrame:
    """The shipped table: ``icd_version`` (9 or 10), ``icd_code`` (no dot), ``group`` (one of PHENOTYPES)."""
    path = resources.files("omnifuse") / "data" / "ccs" / "ccs_benchmark_groups.csv"
    with resources.as_file(path) as p:
        df = pl.read_csv(p, schema={"icd_version": pl.Int8, "icd_code": pl.Utf8, "group": pl.Utf8})
    unknown = set(df["group"].unique().to_list()) - set(PHENOTYPES)
    if unknown:
        raise ValueError(f"CCS table has groups outside the benchmark's 25: {sorted(unknown)}")
    return df

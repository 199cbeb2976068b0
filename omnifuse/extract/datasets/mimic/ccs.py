"""The 25 HCUP CCS phenotype groups of mimic3-benchmarks, for ICD-9-CM and ICD-10-CM diagnosis codes.

Two maps (docs/mimic.md, "Labels"):
- ``gem``: package data ``omnifuse/data/ccs/ccs_benchmark_groups.csv`` (columns ``icd_version, icd_code,
  group``); ``omnifuse/data/ccs/README.md`` names its sources and how it was derived (``build_ccs_table``):
  the benchmark's ICD-9-CM lists and ICD-10-CM codes through the CMS GEM.
- ``medfuse``: MedFuse's ``icd_9_10_definitions_2.yaml``: the same ICD-9-CM lists plus 570 ICD-10-CM codes
  (``medfuse_ccs.MEDFUSE_ICD10``), matched by the code's text whatever its ICD version, as MedFuse does.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import polars as pl

from omnifuse.extract.datasets.mimic.medfuse_ccs import MEDFUSE_ICD10

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

PHENOTYPE_MAPS: tuple[str, ...] = ("medfuse", "gem")
"""Names of the ICD-10-CM -> group maps (``--phenotype-map``); MIMIC-III's ICD-9-CM codes map the same in both."""


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


def build_medfuse_icd10(medfuse_yaml: str | Path, benchmark_yaml: str | Path) -> dict[str, list[str]]:
    """Derive ``medfuse_ccs.MEDFUSE_ICD10`` from MedFuse's ``icd_9_10_definitions_2.yaml`` and the benchmark's
    ``hcup_ccs_2015_definitions.yaml``: per group with ``use_in_benchmark: true``, the MedFuse codes that are not in
    the benchmark's list of that group, in file order, repeats removed.

    Raises ValueError when a derived code is one of the benchmark's ICD-9-CM codes or lies in two groups (the
    shipped module relies on neither happening), or when MedFuse drops one of the benchmark's codes.
    """
    import yaml

    with open(medfuse_yaml) as f:
        med = yaml.safe_load(f)
    with open(benchmark_yaml) as f:
        bench = yaml.safe_load(f)
    icd9 = {str(c) for d in bench.values() for c in d["codes"]}
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for group, d in med.items():
        if not d.get("use_in_benchmark"):
            continue
        if group not in PHENOTYPES:
            raise ValueError(f"group {group!r} of {medfuse_yaml} is not one of the 25 benchmark groups")
        mine = [str(c) for c in d["codes"]]
        lost = set(map(str, bench[group]["codes"])) - set(mine)
        if lost:
            raise ValueError(f"{medfuse_yaml}: group {group!r} lacks benchmark codes {sorted(lost)[:5]}")
        listed = set(map(str, bench[group]["codes"]))
        extra: list[str] = []
        for c in mine:
            if c in listed or c in extra:
                continue
            if c in icd9:
                raise ValueError(f"{medfuse_yaml}: {c} of group {group!r} is an ICD-9-CM code of another group")
            if owner.setdefault(c, group) != group:
                raise ValueError(f"{medfuse_yaml}: {c} lies in groups {owner[c]!r} and {group!r}")
            extra.append(c)
        out[group] = extra
    return out


@lru_cache(maxsize=1)
def load_medfuse_table() -> pl.DataFrame:
    """MedFuse's map as MedFuse applies it: ``icd_code`` (text, no dot, any ICD version) -> ``group``: the
    benchmark's ICD-9-CM lists (the version-9 rows of ``load_ccs_table``) and ``MEDFUSE_ICD10``."""
    icd9 = load_ccs_table().filter(pl.col("icd_version") == 9).select("icd_code", "group")
    icd10 = pl.DataFrame(
        [(c, g) for g, codes in MEDFUSE_ICD10.items() for c in codes.split()],
        schema={"icd_code": pl.Utf8, "group": pl.Utf8},
        orient="row",
    )
    df = pl.concat([icd9, icd10]).unique(maintain_order=True)
    if df["icd_code"].n_unique() != df.height:
        raise ValueError("MedFuse phenotype map: a code lies in two groups")
    return df

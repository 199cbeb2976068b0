"""mimic.ccs: the bundled ICD-9/ICD-10 to CCS phenotype table and the rules that build it."""

from __future__ import annotations

import polars as pl
import pytest

from omnifuse.extract.datasets.mimic.ccs import (
    PHENOTYPES,
    build_ccs_table,
    build_medfuse_icd10,
    load_ccs_table,
    load_medfuse_table,
)
from omnifuse.extract.datasets.mimic.medfuse_ccs import MEDFUSE_ICD10


def test_ccs_table_known_codes():
    t = load_ccs_table()

    def groups(v, c):
        return set(t.filter((pl.col("icd_version") == v) & (pl.col("icd_code") == c))["group"].to_list())

    assert groups(9, "4019") == {"Essential hypertension"}
    assert groups(9, "0389") == {"Septicemia (except in labor)"}
    assert groups(10, "I10") == {"Essential hypertension"}
    assert groups(10, "R6521") == {"Septicemia (except in labor)", "Shock"}
    assert groups(10, "Z00") == set()
    assert set(t["group"].unique().to_list()) == set(PHENOTYPES)


def test_build_ccs_table_rules(tmp_path):
    (tmp_path / "d.yaml").write_text(
        "Shock:\n  use_in_benchmark: true\n  codes: ['78551']\n"
        "Essential hypertension:\n  use_in_benchmark: true\n  codes: ['4019', '4011']\n"
        "Other:\n  use_in_benchmark: false\n  codes: ['4010']\n"
    )
    (tmp_path / "gem.txt").write_text(
        "I10     4010  10000\nI10     4011  10000\nI10     4019  10000\n"  # alternatives: majority
        "R570    78551 10000\nX999    78551 11000\n"  # X999: no map
        "R6521   78551 10111\nR6521   99592 10112\n"
    )  # combination: every target
    t = build_ccs_table(tmp_path / "d.yaml", tmp_path / "gem.txt")
    rows = set(t.iter_rows())
    assert (10, "I10", "Essential hypertension") in rows
    assert (10, "R570", "Shock") in rows and (10, "R6521", "Shock") in rows
    assert not any(r[1] == "X999" for r in rows)
    assert (9, "4010", "Other") not in rows


def test_medfuse_table_known_codes():
    t = load_medfuse_table()
    group = dict(t.iter_rows())
    assert t.height == 767 + 570 and t["icd_code"].n_unique() == t.height  # one group per code
    assert group["4019"] == "Essential hypertension" and group["I10"] == "Essential hypertension"
    assert group["R6521"] == "Shock"  # one group only (the GEM map gives Septicemia and Shock)
    assert group["J9600"] == "Respiratory failure; insufficiency; arrest (adult)"
    # ICD-10 codes MedFuse leaves out, which the GEM map places: the differences measured on the demo
    assert "J9601" not in group and "E1122" not in group
    gem = load_ccs_table()
    assert set(gem.filter(pl.col("icd_code") == "E1122")["group"]) == {"Diabetes mellitus with complications"}
    icd9 = set(gem.filter(pl.col("icd_version") == 9)["icd_code"])
    assert not icd9 & {c for codes in MEDFUSE_ICD10.values() for c in codes.split()}
    assert list(MEDFUSE_ICD10) == PHENOTYPES


def test_build_medfuse_icd10_rules(tmp_path):
    (tmp_path / "bench.yaml").write_text(
        "Shock:\n  use_in_benchmark: true\n  codes: ['78551']\nOther:\n  use_in_benchmark: false\n  codes: ['4010']\n"
    )
    (tmp_path / "med.yaml").write_text(
        "Shock:\n  use_in_benchmark: true\n  codes: ['78551', 'R570', 'R6521', 'R570']\n"
        "Other:\n  use_in_benchmark: false\n  codes: ['4010', 'I10']\n"
    )
    assert build_medfuse_icd10(tmp_path / "med.yaml", tmp_path / "bench.yaml") == {"Shock": ["R570", "R6521"]}
    (tmp_path / "bad.yaml").write_text("Shock:\n  use_in_benchmark: true\n  codes: ['78551', '4010']\n")
    with pytest.raises(ValueError, match="4010 of group 'Shock' is an ICD-9-CM code of another group"):
        build_medfuse_icd10(tmp_path / "bad.yaml", tmp_path / "bench.yaml")
    (tmp_path / "lost.yaml").write_text("Shock:\n  use_in_benchmark: true\n  codes: ['R570']\n")
    with pytest.raises(ValueError, match="lacks benchmark codes"):
        build_medfuse_icd10(tmp_path / "lost.yaml", tmp_path / "bench.yaml")

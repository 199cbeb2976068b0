"""mimic.ccs: the bundled ICD-9/ICD-10 to CCS phenotype table and the rules that build it."""

from __future__ import annotations

import polars as pl

from omnifuse.extract.datasets.mimic.ccs import PHENOTYPES, build_ccs_table, load_ccs_table


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

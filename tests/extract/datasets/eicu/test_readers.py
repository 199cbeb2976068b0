"""eicu.readers: finding tables in any case and extension, string scans with lower-case names, parsing."""

from __future__ import annotations

import polars as pl
import pytest

from omnifuse.extract.datasets.eicu.readers import (
    TABLE_NAMES,
    EicuDataError,
    demo_root,
    find_tables,
    in_window,
    integer,
    not_after_window,
    num,
    require,
    scan,
    text,
)


def test_find_tables_any_case_gz_first(tmp_path):
    (tmp_path / "PATIENT.CSV").write_text("a\n1\n")
    (tmp_path / "lab.csv.gz").write_bytes(b"")
    (tmp_path / "lab.csv").write_text("a\n")
    (tmp_path / "notes.csv").write_text("a\n")  # not an eICU table
    found = find_tables(tmp_path)
    assert found == {"patient": tmp_path / "PATIENT.CSV", "lab": tmp_path / "lab.csv.gz"}
    assert set(find_tables(demo_root())) <= set(TABLE_NAMES) and "patient" in find_tables(demo_root())


def test_scan_reads_strings_and_lower_cases_names(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('PatientUnitStayID, Value ,Name\n7,"1,5",x\n8,2.6, padded \n9,,\n')
    lf = scan(p)
    assert lf.collect_schema().names() == ["patientunitstayid", "value", "name"]
    df = lf.select(stay=integer("patientunitstayid"), v=num("value"), r=integer("value"), t=text("name")).collect()
    assert df["stay"].to_list() == [7, 8, 9]
    assert df["v"].to_list() == [None, 2.6, None]  # "1,5" does not parse: null, never an error
    assert df["r"].to_list() == [None, 3, None] and df["t"].to_list() == ["x", "padded", ""]


def test_windows_and_required_columns():
    df = pl.DataFrame({"off": [-1, 0, 1440, 1441, None]})
    assert df.select(in_window(pl.col("off")))["off"].to_list() == [False, True, True, False, None]
    assert df.select(not_after_window(pl.col("off")))["off"].to_list() == [True, True, True, False, True]
    with pytest.raises(EicuDataError, match=r"eICU table 'lab' lacks columns \['labname'\]"):
        require(df.lazy(), "lab", ["off", "labname"])

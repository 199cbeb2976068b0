"""mimic.readers: the MIMIC-III and MIMIC-IV layouts detected, tables found and read, event tables streamed."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import polars as pl
import pytest

from omnifuse.extract.datasets.mimic.readers import MimicLayout, MimicLayoutError, iter_event_batches


def _write_csv(path: Path, rows: list[dict], gz: bool) -> None:
    opener = gzip.open if gz else open
    with opener(path, "wt", newline="") as f:  # type: ignore[operator]
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


@pytest.mark.parametrize("gz", [True, False])
def test_chartevents_streamed(tmp_path, gz):
    rows = [
        {
            "subject_id": "1",
            "hadm_id": "10",
            "stay_id": "100",
            "charttime": f"2100-01-01 0{i % 10}:00:00",
            "itemid": str(220045 if i % 3 else 999999),
            "value": str(60 + i),
            "valuenum": str(60 + i),
            "valueuom": "bpm",
        }
        for i in range(1000)
    ]
    p = tmp_path / ("chartevents.csv.gz" if gz else "chartevents.csv")
    _write_csv(p, rows, gz)
    batches = list(iter_event_batches(p, {220045}, batch_rows=100, block_bytes=4096))
    assert len(batches) > 1  # really streamed in pieces
    df = pl.concat(batches)
    assert df.height == sum(1 for r in rows if r["itemid"] == "220045")
    assert df.columns == ["hadm_id", "stay_id", "charttime", "itemid", "value", "valuenum", "valueuom"]
    assert sorted(df["valuenum"].to_list()) == sorted(float(r["valuenum"]) for r in rows if r["itemid"] == "220045")


def test_layouts_are_detected_and_missing_tables_named(tmp_path):
    with pytest.raises(MimicLayoutError, match="is not a directory"):
        MimicLayout.detect(tmp_path / "absent")
    with pytest.raises(MimicLayoutError, match="neither MIMIC-III .* nor MIMIC-IV"):
        MimicLayout.detect(tmp_path)
    (tmp_path / "ICUSTAYS.csv").write_text("ROW_ID,ICUSTAY_ID,HADM_ID\n1,200,10\n")
    layout = MimicLayout.detect(tmp_path)
    assert layout.version == "mimic-iii" and layout.path("icustays") == tmp_path / "ICUSTAYS.csv"
    assert layout.read("icustays", ["stay_id", "hadm_id"]).to_dicts() == [{"stay_id": "200", "hadm_id": "10"}]
    with pytest.raises(MimicLayoutError, match=r"lacks columns \['intime'\]"):
        layout.read("icustays", ["stay_id", "intime"])
    with pytest.raises(MimicLayoutError, match="mimic-iii root .*: table 'chartevents' not found"):
        layout.path("chartevents")
    (tmp_path / "iv" / "icu").mkdir(parents=True)
    (tmp_path / "iv" / "icu" / "icustays.csv.gz").write_bytes(b"")
    (tmp_path / "iv" / "core").mkdir()
    (tmp_path / "iv" / "core" / "patients.csv").write_text("subject_id\n1\n")  # MIMIC-IV 1.0 keeps it in core/
    iv = MimicLayout.detect(tmp_path / "iv")
    assert iv.version == "mimic-iv" and iv.path("patients") == tmp_path / "iv" / "core" / "patients.csv"

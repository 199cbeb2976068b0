"""eicu.treatments: treatment-string and infusion indicators in the window (23 h in, 25 h out, before unit
admission never), rates of 0, missing where a table has no row for the stay, counts."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.treatments import build_treatments

INDEX = pl.DataFrame({"stay": [10, 20, 30, 40], "row": [0, 1, 2, 3]})


def _tables(tmp_path) -> dict:
    tx = [
        # (stay, offset, treatmentstring, activeupondischarge)
        (10, 1380, "pulmonary|ventilation and oxygenation|mechanical ventilation", "False"),  # 23 h: in
        (10, 1500, "renal|dialysis|hemodialysis", "False"),  # 25 h: out
        (10, -30, "cardiovascular|shock|vasopressors|norepinephrine > 0.1 micrograms/kg/min", "False"),  # before
        (10, 60, "infectious diseases|medications|therapeutic antibacterials|vancomycin", "True"),
        (10, 70, "infectious diseases|medications|therapeutic antibacterials|vancomycin", "False"),
        (20, 5, "pulmonary|ventilation and oxygenation|mechanical ventilation|non-invasive ventilation", "False"),
        (20, 6, "surgery|infection|prophylactic antibacterials", "False"),
        (20, 7, "cardiovascular|shock|vasopressors|phenylephrine (Neosynephrine)", "False"),
    ]
    inf = [
        # (stay, offset, drugname, drugrate)
        (10, 100, "Norepinephrine (mcg/min)", "5"),
        (10, 110, "Epinephrine (ml/hr)", "0"),  # charted off: not counted
        (10, 1380, "Dobutamine (mcg/kg/min)", ""),  # no rate: counted
        (10, 1500, "Vasopressin (units/min)", "0.04"),  # 25 h: out
        (30, 10, "Propofol (ml/hr)", "12"),
        (30, -10, "Dopamine (mcg/kg/min)", "5"),  # before unit admission: out
    ]
    pl.DataFrame(
        {
            "treatmentid": [str(i) for i in range(len(tx))],
            "patientunitstayid": [str(r[0]) for r in tx],
            "treatmentoffset": [str(r[1]) for r in tx],
            "treatmentstring": [r[2] for r in tx],
            "activeupondischarge": [r[3] for r in tx],
        }
    ).write_csv(tmp_path / "treatment.csv")
    pl.DataFrame(
        {
            "infusiondrugid": [str(i) for i in range(len(inf))],
            "patientunitstayid": [str(r[0]) for r in inf],
            "infusionoffset": [str(r[1]) for r in inf],
            "drugname": [r[2] for r in inf],
            "drugrate": [r[3] for r in inf],
        }
    ).write_csv(tmp_path / "infusiondrug.csv")
    return {"treatment": tmp_path / "treatment.csv", "infusionDrug": tmp_path / "infusiondrug.csv"}


def test_treatment_and_infusion_indicators(tmp_path):
    x, present, raw = build_treatments(_tables(tmp_path), INDEX)
    col = {n: j for j, n in enumerate(raw.feature_names)}
    assert raw.name == "treatments" and x.shape == (4, len(raw.feature_names)) and x.dtype == np.float32
    assert present.tolist() == [True, True, True, False]
    a, b, c = x[0], x[1], x[2]
    assert a[col["tx_mechanical_ventilation"]] == 1.0 and a[col["tx_noninvasive_ventilation"]] == 0.0
    assert a[col["tx_dialysis"]] == 0.0 and a[col["tx_vasopressor"]] == 0.0  # 25 h and before admission: out
    assert a[col["tx_antibacterial"]] == 1.0  # the discharge flag is not read either way
    assert a[col["tx_n_distinct"]] == 2.0
    assert b[col["tx_mechanical_ventilation"]] == 0.0 and b[col["tx_noninvasive_ventilation"]] == 1.0
    assert b[col["tx_antibacterial"]] == 0.0 and b[col["tx_vasopressor"]] == 1.0  # prophylactic only
    assert a[col["inf_norepinephrine"]] == 1.0 and a[col["inf_epinephrine"]] == 0.0  # rate 0: off
    assert a[col["inf_dobutamine"]] == 1.0 and a[col["inf_vasopressin"]] == 0.0
    assert a[col["inf_vasopressor"]] == 1.0 and a[col["inf_inotrope"]] == 1.0 and a[col["inf_n_vasoactive"]] == 2.0
    # stay 20: treatments but no infusion row -> infusion columns missing; stay 30 the reverse
    assert all(math.isnan(b[j]) for n, j in col.items() if n.startswith("inf_"))
    assert all(math.isnan(c[j]) for n, j in col.items() if n.startswith("tx_"))
    assert c[col["inf_sedative"]] == 1.0 and c[col["inf_dopamine"]] == 0.0 and c[col["inf_n_vasoactive"]] == 0.0
    assert np.isnan(x[3]).all()
    kinds = dict(zip(raw.feature_names, raw.preprocessing["feature_kinds"], strict=True))
    assert kinds["tx_n_distinct"] == "numeric:log" and kinds["inf_n_vasoactive"] == "numeric"
    assert kinds["tx_vasopressor"] == "binary" and kinds["inf_vasopressor"] == "binary"
    assert [raw.feature_names[j] for j in raw.preprocessing["continuous"]] == ["tx_n_distinct", "inf_n_vasoactive"]
    assert raw.ranges is not None and raw.ranges["inf_n_vasoactive"] == (0, 7)
    assert set(raw.preprocessing["patterns"]) == set(variables.TREATMENT_PATTERNS)


def test_one_table_only_keeps_every_column(tmp_path):
    tables = _tables(tmp_path)
    x, present, raw = build_treatments({"infusionDrug": tables["infusionDrug"]}, INDEX)
    assert raw.feature_names == build_treatments(tables, INDEX)[2].feature_names
    assert present.tolist() == [True, False, True, False]
    tx = [j for j, n in enumerate(raw.feature_names) if n.startswith("tx_")]
    assert np.isnan(x[:, tx]).all() and raw.preprocessing["tables"] == ["infusionDrug"]

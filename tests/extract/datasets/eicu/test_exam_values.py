"""eicu.exam_values: charted physicalExam numbers per stay (current = latest, lowest = min, highest = max,
GCS = worst), the window (23 h in, 25 h out, before admission only with pre_admission), ranges, flags."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.exam_values import build_exam_values

INDEX = pl.DataFrame({"stay": [10, 20, 30], "row": [0, 1, 2]})
VS = variables.EXAM_VITAL_PREFIX
NEURO = variables.EXAM_PREFIX + "Neurologic/GCS/"


def _exam(tmp_path):
    rows = [
        # (id, stay, offset, path, text)
        (1, 10, 10, VS + "HR/HR Current", "110"),
        (2, 10, 1380, VS + "HR/HR Current", "95"),  # 23 h: in, the latest current value
        (3, 10, 1500, VS + "HR/HR Current", "60"),  # 25 h: never read
        (4, 10, 10, VS + "HR/HR Lowest", "80"),
        (5, 10, 600, VS + "HR/HR Lowest", "70"),
        (6, 10, 10, VS + "HR/HR Highest", "130"),
        (7, 10, 600, VS + "HR/HR Highest", "120"),
        (8, 10, 10, VS + "HR/HR Highest", "900"),  # out of range: dropped, counted
        (9, 10, 10, VS + "FiO2%/FiO2%", "0.4"),  # a fraction: 40 %
        (10, 10, 10, NEURO + "Eyes Score/3", "3"),
        (11, 10, 600, NEURO + "Eyes Score/2", "2"),  # worst eyes 2
        (12, 10, 10, NEURO + "Verbal Score/4", "4"),
        (13, 10, 10, NEURO + "Motor Score/6", "6"),  # no charted total: sum of the worst components, 12
        (14, 10, 10, NEURO + "Score/scored", "scored"),
        (15, 10, 10, VS + "Resp Mode/ventilated", "ventilated"),
        (16, 10, 700, VS + "Resp Mode/spontaneous", "spontaneous"),  # the latest mode: not ventilated
        (17, 20, -30, VS + "HR/HR Current", "140"),  # before unit admission
        (18, 20, 5, NEURO + "14", "14"),
        (19, 20, 6, NEURO + "Score/unable to score due to meds", "unable to score due to meds"),
        (20, 20, 7, VS + "O2 Sat%/O2 Sat% Current", "abc"),  # not a number
        (21, 30, 2000, VS + "HR/HR Current", "88"),  # after the window only: stay 30 missing
        (22, 20, 8, variables.EXAM_PREFIX + "Constitutional/Weight and I&O/Weight (kg)/Admission", "70"),
    ]
    path = tmp_path / "physicalExam.csv"
    pl.DataFrame(
        {
            "physicalexamid": [str(r[0]) for r in rows],
            "patientunitstayid": [str(r[1]) for r in rows],
            "physicalexamoffset": [str(r[2]) for r in rows],
            "physicalexampath": [r[3] for r in rows],
            "physicalexamvalue": [""] * len(rows),
            "physicalexamtext": [r[4] for r in rows],
        }
    ).write_csv(path)
    return path


def test_exam_values_aggregation_window_and_flags(tmp_path):
    x, present, raw, counts = build_exam_values(_exam(tmp_path), INDEX, False)
    col = {n: j for j, n in enumerate(raw.feature_names)}
    assert raw.name == "exam_values" and x.shape == (3, len(raw.feature_names)) and x.dtype == np.float32
    assert present.tolist() == [True, True, False]
    assert counts == {"rows_out_of_range": 1}
    a = x[0]
    assert a[col["exam_hr_current"]] == 95.0  # the 23 h value; the 25 h one is outside the window
    assert a[col["exam_hr_lowest"]] == 70.0 and a[col["exam_hr_highest"]] == 130.0  # 900 dropped
    assert a[col["exam_fio2"]] == 40.0
    assert a[col["exam_gcs_eyes"]] == 2.0 and a[col["exam_gcs_verbal"]] == 4.0 and a[col["exam_gcs_motor"]] == 6.0
    assert a[col["exam_gcs_total"]] == 12.0
    assert a[col["exam_gcs_unable_meds"]] == 0.0 and a[col["exam_resp_mode_ventilated"]] == 0.0
    assert math.isnan(a[col["exam_sbp_current"]])
    b = x[1]
    assert math.isnan(b[col["exam_hr_current"]])  # its only heart rate precedes unit admission
    assert b[col["exam_gcs_total"]] == 14.0 and math.isnan(b[col["exam_gcs_eyes"]])
    assert b[col["exam_gcs_unable_meds"]] == 1.0 and math.isnan(b[col["exam_resp_mode_ventilated"]])
    assert math.isnan(b[col["exam_spo2_current"]])
    assert np.isnan(x[2]).all()
    kinds = dict(zip(raw.feature_names, raw.preprocessing["feature_kinds"], strict=True))
    assert kinds["exam_hr_current"] == "numeric" and kinds["exam_gcs_unable_meds"] == "binary"
    assert raw.preprocessing["categories"] == {}
    assert raw.preprocessing["aggregation"]["exam_hr_lowest"] == "min"
    assert raw.preprocessing["aggregation"]["exam_gcs_total"] == "min"
    assert raw.ranges is not None and raw.ranges["exam_gcs_eyes"] == (1, 4)

    x2, present2, _, _ = build_exam_values(_exam(tmp_path), INDEX, True)  # pre_admission: -30 min is read
    assert x2[1, col["exam_hr_current"]] == 140.0 and present2.tolist() == [True, True, False]
    assert np.array_equal(x2[0], x[0], equal_nan=True)

"""mimic.clean: unit conversions, categorical maps, text values, outlier ranges, the unreadable counted."""

from __future__ import annotations

import polars as pl
import pytest

from omnifuse.extract.datasets.mimic.clean import clean_events, merge_counts
from omnifuse.extract.datasets.mimic.variables import CATEGORIES, VARIABLES


def _one(
    itemid: int, value: str | None, valuenum: float | None = None, uom: str | None = None, ranges: bool = True
) -> tuple[str, float] | None:
    ev = pl.DataFrame(
        {"k": [0], "itemid": [itemid], "value": [value], "valuenum": [valuenum], "valueuom": [uom]},
        schema={"k": pl.Int64, "itemid": pl.Int64, "value": pl.Utf8, "valuenum": pl.Float64, "valueuom": pl.Utf8},
    )
    out, _ = clean_events(ev, outlier_ranges=ranges)
    if out.height == 0:
        return None
    var = VARIABLES[out["var"][0]]
    val = out["val"][0]
    return var, (CATEGORIES[var][int(val)] if var in CATEGORIES else val)


def test_temperature_fahrenheit_to_celsius():
    var, v = _one(223761, "98.6", 98.6, "°F")
    assert var == "Temperature" and v == pytest.approx(37.0)
    assert _one(678, "100.4")[1] == pytest.approx(38.0)  # MIMIC-III CareVue "Temperature F"
    assert _one(223762, "37.2", 37.2, "°C")[1] == pytest.approx(37.2)


def test_weight_pounds_and_ounces_to_kg():
    assert _one(226531, "200", 200.0)[1] == pytest.approx(200 * 0.453592)  # label "Admission Weight (lbs.)"
    assert _one(3581, "150")[1] == pytest.approx(150 * 0.453592)
    assert _one(3582, "1600")[1] == pytest.approx(100 * 0.453592)  # ounces
    assert _one(226512, "81.5", 81.5, "kg")[1] == pytest.approx(81.5)


def test_height_inches_to_cm_rounded():
    assert _one(226707, "70", 70.0, "Inch")[1] == 178.0
    assert _one(226730, "172", 172.0, "cm")[1] == 172.0


def test_fio2_fraction_and_percent():
    assert _one(223835, "50", 50.0)[1] == pytest.approx(0.5)
    assert _one(223835, "0.4", 0.4)[1] == pytest.approx(0.4)
    assert _one(3420, "100")[1] == pytest.approx(1.0)
    assert _one(223835, "0", 0.0) is None  # below the outlier bound 0.2: removed
    assert _one(223835, "0", 0.0, ranges=False)[1] == 0.0


def test_o2sat_fraction_and_blood_pressure_pairs():
    assert _one(646, "0.97")[1] == pytest.approx(97.0)
    assert _one(8441, "120/75") == ("Diastolic blood pressure", 75.0)
    assert _one(455, "120/75") == ("Systolic blood pressure", 120.0)


def test_lab_error_text_dropped_and_numbers_kept():
    assert _one(50931, "ERROR") is None
    assert _one(50931, "132", 132.0) == ("Glucose", 132.0)
    assert _one(50820, "7.31", 7.31) == ("pH", pytest.approx(7.31))


def test_ranges_clip_and_remove():
    assert _one(220045, "400", 400.0) is None  # > outlier high 390
    assert _one(220045, "360", 360.0)[1] == 350.0  # clipped to valid high
    assert _one(220045, "360", 360.0, ranges=False)[1] == 360.0


@pytest.mark.parametrize(
    "itemid,value,num,expected",
    [
        (220739, "To Speech", 3.0, "To Speech"),
        (220739, "3.0", 3.0, "To Speech"),  # MIMIC-IV demo: number in value
        (220739, None, 1.0, "None"),  # empty value: valuenum
        (184, "3 To speech", 3.0, "3 To speech"),
        (184, "2", None, "2 To pain"),
        (223901, "Obeys Commands", 6.0, "Obeys Commands"),
        (223901, "2.0", 2.0, "Abnormal extension"),
        (454, "4", 4.0, "4 Flex-withdraws"),
        (223900, "No Response-ETT", 1.0, "No Response-ETT"),
        (223900, "1.0", 1.0, "No Response"),
        (723, "1.0 ET/Trach", 1.0, "1.0 ET/Trach"),
        (723, "5", 5.0, "5 Oriented"),
        (198, "15", 15.0, "15"),
        (198, "7.0", 7.0, "7"),
    ],
)
def test_gcs_text_and_numeric(itemid, value, num, expected):
    var, cat = _one(itemid, value, num)
    assert var.startswith("Glascow") and cat == expected


@pytest.mark.parametrize(
    "itemid,value,expected",
    [
        (3348, "Normal <3 secs", "0.0"),
        (115, "Brisk", "0.0"),
        (8377, "Abnormal >3 secs", "1.0"),
        (3348, "Delayed", "1.0"),
        (223951, "Normal <3 Seconds", "0.0"),
        (224308, "Abnormal >3 Seconds", "1.0"),
    ],
)
def test_capillary_refill_text(itemid, value, expected):
    assert _one(itemid, value) == ("Capillary refill rate", expected)


def test_unknown_category_and_empty_value_dropped_and_counted():
    ev = pl.DataFrame(
        {
            "itemid": [223951, 220739, 220739],
            "value": [None, "Unknown", "9"],
            "valuenum": [None, None, 9.0],
            "valueuom": [None, None, None],
        },
        schema={"itemid": pl.Int64, "value": pl.Utf8, "valuenum": pl.Float64, "valueuom": pl.Utf8},
    )
    out, counts = clean_events(ev)
    assert out.height == 0
    assert counts["Capillary refill rate"]["unreadable"] == 1
    assert counts["Glascow coma scale eye opening"]["unreadable"] == 2


def test_counts_of_batches_add_up():
    total: dict[str, dict[str, int]] = {}
    merge_counts(total, {"pH": {"seen": 3, "unreadable": 1}})
    merge_counts(total, {"pH": {"seen": 2, "out_of_range": 1}, "Glucose": {"seen": 1}})
    assert total == {
        "pH": {"seen": 5, "unreadable": 1, "out_of_range": 1},
        "Glucose": {"seen": 1, "unreadable": 0, "out_of_range": 0},
    }

"""mimic.clean in both modes: unit conversions, categorical maps, text values, the benchmark's quirks
(``benchmark``), outlier ranges (``clean``), the unreadable counted. Expected values are computed by hand from
the rules of mimic3-benchmarks' ``preprocessing.py`` (cited per test)."""

from __future__ import annotations

import polars as pl
import pytest

from omnifuse.extract.datasets.mimic.clean import clean_events, merge_counts
from omnifuse.extract.datasets.mimic.variables import CATEGORIES, VARIABLES


def _frame(itemid: int, value: str | None, valuenum: float | None, uom: str | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"k": [0], "itemid": [itemid], "value": [value], "valuenum": [valuenum], "valueuom": [uom]},
        schema={"k": pl.Int64, "itemid": pl.Int64, "value": pl.Utf8, "valuenum": pl.Float64, "valueuom": pl.Utf8},
    )


def _one(
    itemid: int,
    value: str | None,
    valuenum: float | None = None,
    uom: str | None = None,
    mode: str = "clean",
    units: bool = True,
) -> tuple[str, float] | None:
    out, _ = clean_events(_frame(itemid, value, valuenum, uom), mode, units=units)  # type: ignore[arg-type]
    if out.height == 0:
        return None
    var = VARIABLES[out["var"][0]]
    val = out["val"][0]
    return var, (CATEGORIES[var][int(val)] if var in CATEGORIES else val)


def _bench(itemid: int, value: str | None, valuenum: float | None = None, uom: str | None = None, units: bool = True):
    return _one(itemid, value, valuenum, uom, mode="benchmark", units=units)


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
    assert _bench(223835, "0", 0.0)[1] == 0.0  # the benchmark keeps it


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
    assert _bench(220045, "360", 360.0)[1] == 360.0


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
    if value is not None:  # the benchmark reads VALUE only; numbers there map the same (a demo-layout departure)
        assert _bench(itemid, value, num) == (var, expected)
    else:
        assert _bench(itemid, value, num) is None


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
    # benchmark clean_crr: CareVue wording only; 223951/224308 are not in its item map
    assert _bench(itemid, value) == (("Capillary refill rate", expected) if itemid < 200000 else None)
    assert _bench(3348, "Normal <3 Seconds") is None and _bench(3348, " Brisk") is None


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
    out, counts = clean_events(ev, "clean")
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


def test_benchmark_fio2_divides_every_value_without_torr():
    # clean_fio2 as published ("is_str" is a 0-d True array in Python 3): every non-torr value / 100
    assert _bench(223835, "50", 50.0)[1] == pytest.approx(0.5)
    assert _bench(223835, "0.4", 0.4)[1] == pytest.approx(0.004)
    assert _bench(3420, "0.5", uom="torr")[1] == 0.5
    assert _one(223835, "0.4", 0.4)[1] == pytest.approx(0.4)  # clean mode: only values > 1


def test_benchmark_keeps_implausible_values():
    assert _bench(51491, "5.0") == ("pH", 5.0)  # urine pH, kept as pH (outlier removal disabled)
    assert _bench(51, "11647") == ("Systolic blood pressure", 11647.0)
    assert _bench(52, "1") == ("Mean blood pressure", 1.0)
    assert _one(51491, "5.0") is None and _one(51, "11647") is None  # clean: outside the outlier bounds


def test_benchmark_reads_value_text_as_the_benchmark_does():
    # clean_lab / clean_o2sat: the pattern on the text as written, no white space allowed
    assert _bench(50820, " 7.31") is None and _one(50820, " 7.31") == ("pH", pytest.approx(7.31))
    assert _bench(646, "0.97")[1] == pytest.approx(97.0)
    # float() (astype(float), the discretiser): white space, signs and exponents
    assert _bench(220045, "1e2") == ("Heart Rate", 100.0) and _one(220045, "1e2") is None
    assert _bench(678, " 98.6 ")[1] == pytest.approx((98.6 - 32) * 5 / 9)
    # empty VALUE: dropped even with VALUENUM (read_events drops null VALUE)
    assert _bench(220045, None, 80.0) is None and _one(220045, None, 80.0) == ("Heart Rate", 80.0)
    # texts the benchmark cannot convert (it would stop): dropped and counted
    assert _bench(455, "120/") is None and _bench(220045, "irregular") is None


def test_benchmark_pandas1_missing_texts():
    # pandas 1.x reads "NA", "nan", "NULL" ... as missing: the row has no value; "None" stays a GCS category
    for text in ("NA", "nan", "NULL", "n/a", "#N/A"):
        assert _bench(220045, text) is None
    assert _bench(220739, "None") == ("Glascow coma scale eye opening", "None")


def test_benchmark_units_and_labels():
    # clean_height: unit or label with "in"; MIMIC-IV in MedFuse's port has no unit (units=False)
    assert _bench(226707, "70", 70.0, "Inch")[1] == 178.0
    assert _bench(226707, "70", 70.0, "Inch", units=False)[1] == 70.0
    assert _bench(1394, "70")[1] == 178.0  # label "Height Inches"
    assert _bench(226531, "200", 200.0, units=False)[1] == pytest.approx(200 * 0.453592)  # label "(lbs.)"
    # clean_temperature: the "F" tests lower-case the text first and never fire; only v >= 79 converts
    assert _bench(223761, "78", 78.0, "°F")[1] == 78.0
    # np.round is half to even
    assert _bench(226707, "61.25", uom="Inch")[1] == 156.0  # 155.575 -> 156


def test_tie_keys():
    ev = pl.DataFrame(
        {
            "k": [0, 1, 2, 3],
            "itemid": [220045, 220210, 220739, 50820],
            "value": ["9", "15", "To Speech", "7.3"],
            "valuenum": [9.0, 15.0, 3.0, 7.3],
            "valueuom": [None, None, None, None],
        },
        schema={"k": pl.Int64, "itemid": pl.Int64, "value": pl.Utf8, "valuenum": pl.Float64, "valueuom": pl.Utf8},
    )
    bench = clean_events(ev, "benchmark")[0].sort("k")
    assert bench["key"].to_list() == ["9", "15", "To Speech", None]  # raw text of uncleaned variables
    clean = clean_events(ev, "clean")[0].sort("k")
    assert clean["key"].to_list() == [None, None, "To Speech", None]


def test_bad_mode_refused():
    with pytest.raises(ValueError, match="ehr mode must be one of"):
        clean_events(_frame(220045, "80", 80.0, None), "raw")  # type: ignore[arg-type]

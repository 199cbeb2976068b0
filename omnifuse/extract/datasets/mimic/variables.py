"""The 17 EHR variables of mimic3-benchmarks: item ids, categories, normal values, ranges and the 76 columns.

Facts from YerevaNN/mimic3-benchmarks (``itemid_to_variable_map.csv`` rows with status "ready",
``variable_ranges.csv``, ``discretizer_config.json``); MedFuse's MIMIC-IV port uses the same map, whose
Metavision item ids (22xxxx) and lab item ids (50xxx/51xxx) are the ones MIMIC-IV uses.
"""

from __future__ import annotations

VARIABLES: list[str] = [
    "Capillary refill rate",
    "Diastolic blood pressure",
    "Fraction inspired oxygen",
    "Glascow coma scale eye opening",
    "Glascow coma scale motor response",
    "Glascow coma scale total",
    "Glascow coma scale verbal response",
    "Glucose",
    "Heart Rate",
    "Height",
    "Mean blood pressure",
    "Oxygen saturation",
    "Respiratory rate",
    "Systolic blood pressure",
    "Temperature",
    "Weight",
    "pH",
]
"""Channel order of the benchmark's discretiser (its ``id_to_channel``); spelling kept ("Glascow")."""

CATEGORIES: dict[str, list[str]] = {
    "Capillary refill rate": ["0.0", "1.0"],
    "Glascow coma scale eye opening": [
        "To Pain",
        "3 To speech",
        "1 No Response",
        "4 Spontaneously",
        "None",
        "To Speech",
        "Spontaneously",
        "2 To pain",
    ],
    "Glascow coma scale motor response": [
        "1 No Response",
        "3 Abnorm flexion",
        "Abnormal extension",
        "No response",
        "4 Flex-withdraws",
        "Localizes Pain",
        "Flex-withdraws",
        "Obeys Commands",
        "Abnormal Flexion",
        "6 Obeys Commands",
        "5 Localizes Pain",
        "2 Abnorm extensn",
    ],
    "Glascow coma scale total": ["11", "10", "13", "12", "15", "14", "3", "5", "4", "7", "6", "9", "8"],
    "Glascow coma scale verbal response": [
        "1 No Response",
        "No Response",
        "Confused",
        "Inappropriate Words",
        "Oriented",
        "No Response-ETT",
        "5 Oriented",
        "Incomprehensible sounds",
        "1.0 ET/Trach",
        "4 Confused",
        "2 Incomp sounds",
        "3 Inapprop words",
    ],
}
"""One-hot value lists of the categorical channels, in the benchmark's column order (not sorted)."""

NORMAL_VALUES: dict[str, str | float] = {
    "Capillary refill rate": "0.0",
    "Diastolic blood pressure": 59.0,
    "Fraction inspired oxygen": 0.21,
    "Glascow coma scale eye opening": "4 Spontaneously",
    "Glascow coma scale motor response": "6 Obeys Commands",
    "Glascow coma scale total": "15",
    "Glascow coma scale verbal response": "5 Oriented",
    "Glucose": 128.0,
    "Heart Rate": 86.0,
    "Height": 170.0,
    "Mean blood pressure": 77.0,
    "Oxygen saturation": 98.0,
    "Respiratory rate": 19.0,
    "Systolic blood pressure": 118.0,
    "Temperature": 36.6,
    "Weight": 81.0,
    "pH": 7.4,
}
"""Value imputed before a variable's first observation ('previous' strategy)."""

RANGES: dict[str, tuple[float, float, float, float]] = {
    # variable: (outlier low, valid low, valid high, outlier high), from variable_ranges.csv
    "Capillary refill rate": (0, 0, 1, 1),
    "Diastolic blood pressure": (0, 0, 375, 375),
    "Fraction inspired oxygen": (0.2, 0.21, 1, 1.1),
    "Glascow coma scale eye opening": (1, 1, 4, 4),
    "Glascow coma scale motor response": (1, 1, 6, 6),
    "Glascow coma scale total": (3, 3, 15, 15),
    "Glascow coma scale verbal response": (1, 1, 5, 5),
    "Glucose": (0, 33, 2000, 2200),
    "Heart Rate": (0, 0, 350, 390),
    "Height": (0, 0, 240, 275),
    "Mean blood pressure": (0, 14, 330, 375),
    "Oxygen saturation": (0, 0, 100, 150),
    "Respiratory rate": (0, 0, 300, 330),
    "Systolic blood pressure": (0, 0, 375, 375),
    "Temperature": (14.2, 26, 45, 47),
    "Weight": (0, 0, 250, 250),
    "pH": (6.3, 6.3, 8.4, 10),
}
"""Outside [outlier low, outlier high]: removed; between outlier and valid bound: clipped to the valid bound.
Applied to continuous channels only (categories are checked against CATEGORIES)."""

ITEMS: dict[int, tuple[str, str, str]] = {
    # itemid: (variable, MIMIC label, source table: "chart" = chartevents, "lab" = labevents)
    # Capillary refill rate
    115: ("Capillary refill rate", "Capillary Refill [Right]", "chart"),
    3348: ("Capillary refill rate", "Capillary Refill", "chart"),
    8377: ("Capillary refill rate", "Capillary Refill [Left]", "chart"),
    # (omnifuse addition, MIMIC-IV only: absent from the benchmark's map; read in ehr_mode="clean" only)
    223951: ("Capillary refill rate", "Capillary Refill R", "chart"),
    224308: ("Capillary refill rate", "Capillary Refill L", "chart"),
    # Diastolic blood pressure
    8368: ("Diastolic blood pressure", "Arterial BP [Diastolic]", "chart"),
    8440: ("Diastolic blood pressure", "Manual BP [Diastolic]", "chart"),
    8441: ("Diastolic blood pressure", "NBP [Diastolic]", "chart"),
    8502: ("Diastolic blood pressure", "BP Cuff [Diastolic]", "chart"),
    8503: ("Diastolic blood pressure", "BP Left Arm [Diastolic]", "chart"),
    8504: ("Diastolic blood pressure", "BP Left Leg [Diastolic]", "chart"),
    8506: ("Diastolic blood pressure", "BP Right Arm [Diastolic]", "chart"),
    8507: ("Diastolic blood pressure", "BP Right Leg [Diastolic]", "chart"),
    8555: ("Diastolic blood pressure", "Arterial BP #2 [Diastolic]", "chart"),
    220051: ("Diastolic blood pressure", "Arterial Blood Pressure diastolic", "chart"),
    220180: ("Diastolic blood pressure", "Non Invasive Blood Pressure diastolic", "chart"),
    224643: ("Diastolic blood pressure", "Manual Blood Pressure Diastolic Left", "chart"),
    225310: ("Diastolic blood pressure", "ART BP Diastolic", "chart"),
    # Fraction inspired oxygen
    189: ("Fraction inspired oxygen", "FiO2 (Analyzed)", "chart"),
    727: ("Fraction inspired oxygen", "Vision FiO2", "chart"),
    3420: ("Fraction inspired oxygen", "FIO2", "chart"),
    3422: ("Fraction inspired oxygen", "FIO2 [Meas]", "chart"),
    223835: ("Fraction inspired oxygen", "Inspired O2 Fraction", "chart"),
    # Glascow coma scale eye opening
    184: ("Glascow coma scale eye opening", "Eye Opening", "chart"),
    220739: ("Glascow coma scale eye opening", "GCS - Eye Opening", "chart"),
    # Glascow coma scale motor response
    454: ("Glascow coma scale motor response", "Motor Response", "chart"),
    223901: ("Glascow coma scale motor response", "GCS - Motor Response", "chart"),
    # Glascow coma scale total
    198: ("Glascow coma scale total", "GCS Total", "chart"),
    # Glascow coma scale verbal response
    723: ("Glascow coma scale verbal response", "Verbal Response", "chart"),
    223900: ("Glascow coma scale verbal response", "GCS - Verbal Response", "chart"),
    # Glucose
    807: ("Glucose", "Fingerstick Glucose", "chart"),
    811: ("Glucose", "Glucose (70-105)", "chart"),
    1529: ("Glucose", "Glucose", "chart"),
    3745: ("Glucose", "BloodGlucose", "chart"),
    50809: ("Glucose", "GLUCOSE", "lab"),
    50931: ("Glucose", "GLUCOSE", "lab"),
    51478: ("Glucose", "GLUCOSE", "lab"),
    220621: ("Glucose", "Glucose (serum)", "chart"),
    225664: ("Glucose", "Glucose finger stick", "chart"),
    226537: ("Glucose", "Glucose (whole blood)", "chart"),
    # Heart Rate
    211: ("Heart Rate", "Heart Rate", "chart"),
    220045: ("Heart Rate", "Heart Rate", "chart"),
    # Height
    1394: ("Height", "Height Inches", "chart"),
    226707: ("Height", "Height", "chart"),
    226730: ("Height", "Height (cm)", "chart"),
    # Mean blood pressure
    52: ("Mean blood pressure", "Arterial BP Mean", "chart"),
    224: ("Mean blood pressure", "IABP Mean", "chart"),
    456: ("Mean blood pressure", "NBP Mean", "chart"),
    3312: ("Mean blood pressure", "BP Cuff [Mean]", "chart"),
    3314: ("Mean blood pressure", "BP Left Arm [Mean]", "chart"),
    3316: ("Mean blood pressure", "BP Left Leg [Mean]", "chart"),
    3320: ("Mean blood pressure", "BP Right Arm [Mean]", "chart"),
    3322: ("Mean blood pressure", "BP Right Leg [Mean]", "chart"),
    6702: ("Mean blood pressure", "Arterial BP Mean #2", "chart"),
    220052: ("Mean blood pressure", "Arterial Blood Pressure mean", "chart"),
    220181: ("Mean blood pressure", "Non Invasive Blood Pressure mean", "chart"),
    224322: ("Mean blood pressure", "IABP Mean", "chart"),
    225312: ("Mean blood pressure", "ART BP mean", "chart"),
    # Oxygen saturation
    646: ("Oxygen saturation", "SpO2", "chart"),
    834: ("Oxygen saturation", "SaO2", "chart"),
    8498: ("Oxygen saturation", "O2 sat [Post]", "chart"),
    50817: ("Oxygen saturation", "OXYGEN SATURATION", "lab"),
    220227: ("Oxygen saturation", "Arterial O2 Saturation", "chart"),
    220277: ("Oxygen saturation", "O2 saturation pulseoxymetry", "chart"),
    # Respiratory rate
    614: ("Respiratory rate", "Resp Rate (Spont)", "chart"),
    615: ("Respiratory rate", "Resp Rate (Total)", "chart"),
    618: ("Respiratory rate", "Respiratory Rate", "chart"),
    651: ("Respiratory rate", "Spon RR (Mech.)", "chart"),
    3603: ("Respiratory rate", "Resp Rate", "chart"),
    220210: ("Respiratory rate", "Respiratory Rate", "chart"),
    224422: ("Respiratory rate", "Spont RR", "chart"),
    224689: ("Respiratory rate", "Respiratory Rate (spontaneous)", "chart"),
    224690: ("Respiratory rate", "Respiratory Rate (Total)", "chart"),
    # Systolic blood pressure
    51: ("Systolic blood pressure", "Arterial BP [Systolic]", "chart"),
    442: ("Systolic blood pressure", "Manual BP [Systolic]", "chart"),
    455: ("Systolic blood pressure", "NBP [Systolic]", "chart"),
    3313: ("Systolic blood pressure", "BP Cuff [Systolic]", "chart"),
    3315: ("Systolic blood pressure", "BP Left Arm [Systolic]", "chart"),
    3317: ("Systolic blood pressure", "BP Left Leg [Systolic]", "chart"),
    3321: ("Systolic blood pressure", "BP Right Arm [Systolic]", "chart"),
    3323: ("Systolic blood pressure", "BP Right Leg [Systolic]", "chart"),
    6701: ("Systolic blood pressure", "Arterial BP #2 [Systolic]", "chart"),
    220050: ("Systolic blood pressure", "Arterial Blood Pressure systolic", "chart"),
    220179: ("Systolic blood pressure", "Non Invasive Blood Pressure systolic", "chart"),
    224167: ("Systolic blood pressure", "Manual Blood Pressure Systolic Left", "chart"),
    225309: ("Systolic blood pressure", "ART BP Systolic", "chart"),
    227243: ("Systolic blood pressure", "Manual Blood Pressure Systolic Right", "chart"),
    # Temperature
    676: ("Temperature", "Temperature C", "chart"),
    677: ("Temperature", "Temperature C (calc)", "chart"),
    678: ("Temperature", "Temperature F", "chart"),
    679: ("Temperature", "Temperature F (calc)", "chart"),
    3654: ("Temperature", "Temp Rectal [F]", "chart"),
    3655: ("Temperature", "Temp Skin [C]", "chart"),
    223761: ("Temperature", "Temperature Fahrenheit", "chart"),
    223762: ("Temperature", "Temperature Celsius", "chart"),
    # Weight
    763: ("Weight", "Daily Weight", "chart"),
    3580: ("Weight", "Present Weight  (kg)", "chart"),
    3581: ("Weight", "Present Weight  (lb)", "chart"),
    3582: ("Weight", "Present Weight  (oz)", "chart"),
    3693: ("Weight", "Weight Kg", "chart"),
    224639: ("Weight", "Daily Weight", "chart"),
    226512: ("Weight", "Admission Weight (Kg)", "chart"),
    226531: ("Weight", "Admission Weight (lbs.)", "chart"),
    # pH
    780: ("pH", "Arterial pH", "chart"),
    860: ("pH", "Venous pH", "chart"),
    1126: ("pH", "Art.pH", "chart"),
    1673: ("pH", "PH", "chart"),
    3839: ("pH", "ph (other)", "chart"),
    4202: ("pH", "pH (cap)", "chart"),
    4753: ("pH", "pH (Art)", "chart"),
    50820: ("pH", "PH", "lab"),
    50831: ("pH", "PH", "lab"),
    51094: ("pH", "PH", "lab"),
    51491: ("pH", "PH", "lab"),
    220274: ("pH", "PH (Venous)", "chart"),
    223830: ("pH", "PH (Arterial)", "chart"),
}

ADDED_ITEMS: frozenset[int] = frozenset({223951, 224308})
"""Item ids of ITEMS that the benchmark's map lacks (MIMIC-IV capillary refill): read in ``clean`` mode only."""

BENCHMARK_ITEMS: frozenset[int] = frozenset(ITEMS) - ADDED_ITEMS
"""The 114 item ids of the benchmark's ``itemid_to_variable_map.csv`` with status "ready" and COUNT > 0
(``preprocessing.read_itemid_to_variable_map``); MedFuse's MIMIC-IV copy of the map is the same file."""

CRR_TEXT_BENCHMARK: dict[str, str] = {
    # benchmark preprocessing.clean_crr: exact texts (MIMIC-III CareVue wording)
    "Normal <3 secs": "0.0",
    "Brisk": "0.0",
    "Abnormal >3 secs": "1.0",
    "Delayed": "1.0",
}
"""Capillary refill text -> category ("0.0" normal, "1.0" abnormal) in ``benchmark`` mode; other text is dropped."""

CRR_TEXT: dict[str, str] = {
    **CRR_TEXT_BENCHMARK,
    # MIMIC-III Metavision / MIMIC-IV wording (omnifuse addition, ``clean`` mode)
    "Normal <3 Seconds": "0.0",
    "Abnormal >3 Seconds": "1.0",
}
"""Capillary refill text -> category in ``clean`` mode (the benchmark's four texts and the Metavision wording)."""

BENCHMARK_CLEANED: frozenset[str] = frozenset(
    {
        "Capillary refill rate",
        "Diastolic blood pressure",
        "Systolic blood pressure",
        "Fraction inspired oxygen",
        "Oxygen saturation",
        "Glucose",
        "pH",
        "Temperature",
        "Weight",
        "Height",
    }
)
"""Variables that the benchmark's ``preprocessing.clean_events`` converts to numbers (its ``clean_fns``). The
others (heart rate, respiratory rate, mean blood pressure, the four GCS items) keep their raw text until the
discretiser, so its same-time tie-break compares them as strings."""

PANDAS1_NA_VALUES: frozenset[str] = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "n/a",
        "nan",
        "null",
    }
)
"""Texts that pandas 1.x ``read_csv`` reads as missing (``pandas._libs.parsers.STR_NA_VALUES`` of pandas 1.5;
pandas 2 adds "None", which would drop the GCS eye category "None"): the benchmark re-reads each subject's
``events.csv`` with pandas, so a VALUE equal to one of them is an empty value and the row is dropped."""

# Numeric GCS -> the text the same item carries in full MIMIC (checked on the MIMIC-III demo, where both
# columns are filled): Metavision items (MIMIC-IV) and CareVue items (MIMIC-III only).
_EYE_MV = {1: "None", 2: "To Pain", 3: "To Speech", 4: "Spontaneously"}
_EYE_CV = {1: "1 No Response", 2: "2 To pain", 3: "3 To speech", 4: "4 Spontaneously"}
_MOTOR_MV = {
    1: "No response",
    2: "Abnormal extension",
    3: "Abnormal Flexion",
    4: "Flex-withdraws",
    5: "Localizes Pain",
    6: "Obeys Commands",
}
_MOTOR_CV = {
    1: "1 No Response",
    2: "2 Abnorm extensn",
    3: "3 Abnorm flexion",
    4: "4 Flex-withdraws",
    5: "5 Localizes Pain",
    6: "6 Obeys Commands",
}
_VERBAL_MV = {1: "No Response", 2: "Incomprehensible sounds", 3: "Inappropriate Words", 4: "Confused", 5: "Oriented"}
_VERBAL_CV = {1: "1 No Response", 2: "2 Incomp sounds", 3: "3 Inapprop words", 4: "4 Confused", 5: "5 Oriented"}
GCS_NUMERIC: dict[int, dict[int, str]] = {
    220739: _EYE_MV,
    184: _EYE_CV,
    223901: _MOTOR_MV,
    454: _MOTOR_CV,
    223900: _VERBAL_MV,
    723: _VERBAL_CV,
    198: {k: str(k) for k in range(3, 16)},
}
"""For a GCS row whose ``value`` is a number (or empty, with ``valuenum``): the category text to use.
A numeric verbal 1 cannot tell "No Response" from "No Response-ETT"; it becomes "No Response"."""


def is_categorical(variable: str) -> bool:
    return variable in CATEGORIES


CONTINUOUS: list[str] = [v for v in VARIABLES if v not in CATEGORIES]


def feature_names() -> list[str]:
    """The 76 column names in the benchmark's header order: values (one-hot ``var->value``), then masks."""
    names: list[str] = []
    for v in VARIABLES:
        if v in CATEGORIES:
            names.extend(f"{v}->{c}" for c in CATEGORIES[v])
        else:
            names.append(v)
    names.extend(f"mask->{v}" for v in VARIABLES)
    return names


def column_offsets() -> list[int]:
    """Start column of each variable's value block, in VARIABLES order (59 value columns in all)."""
    out, pos = [], 0
    for v in VARIABLES:
        out.append(pos)
        pos += len(CATEGORIES[v]) if v in CATEGORIES else 1
    return out


def continuous_indices() -> list[int]:
    """Column indices (into the 76) of the 12 continuous channels: what stage two standardises."""
    offs = column_offsets()
    return [offs[i] for i, v in enumerate(VARIABLES) if v not in CATEGORIES]


N_FEATURES = 76
assert len(feature_names()) == N_FEATURES
assert len(CONTINUOUS) == 12
assert set(v for v, _, _ in ITEMS.values()) == set(VARIABLES)
assert len(BENCHMARK_ITEMS) == 114
assert set(ITEMS) >= ADDED_ITEMS

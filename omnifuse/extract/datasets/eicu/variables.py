"""Allow-lists of the eICU adapter: every input column is named here, none is chosen by exclusion.

Each time-series variable carries its unit and a plausibility range; a value outside the range is treated
as not observed (a charting error such as a tidal volume of 800,000 mL), never clipped. ``agg`` says how
several values in one hourly bin combine: ``last`` (the latest offset wins; ties by the table's row id) for
levels such as a blood pressure, ``sum`` for volumes charted per entry (intake, output, urine).
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_MIN = 1440
"""The observation window: offsets 0 to 1,440 minutes from ICU (unit) admission, both ends inclusive."""
BIN_MIN = 60
N_BINS = WINDOW_MIN // BIN_MIN  # 24 hourly bins; offset 1,440 exactly falls in the last bin


@dataclass(frozen=True)
class SeriesVar:
    """One time-series feature: its name in ``feature_names``, unit, valid range and bin aggregation."""

    name: str
    unit: str
    lo: float
    hi: float
    agg: str = "last"
    fraction_to_percent: bool = False  # FiO2 charted as 0.4 means 40 %


# --- vitalAperiodic (non-invasive blood pressure and haemodynamics; wide table) -------------------------
VITAL_APERIODIC: dict[str, SeriesVar] = {
    "noninvasivesystolic": SeriesVar("nibp_systolic", "mmHg", 25, 300),
    "noninvasivediastolic": SeriesVar("nibp_diastolic", "mmHg", 1, 200),
    "noninvasivemean": SeriesVar("nibp_mean", "mmHg", 1, 250),
    "paop": SeriesVar("paop", "mmHg", 0, 60),
    "cardiacoutput": SeriesVar("cardiac_output", "L/min", 0, 20),
    "cardiacinput": SeriesVar("cardiac_index", "L/min/m2", 0, 10),
    "svr": SeriesVar("svr", "dyn*s/cm5", 0, 5000),
    "svri": SeriesVar("svri", "dyn*s*m2/cm5", 0, 10000),
}

# --- vitalPeriodic (full database only; 5-minute medians from bedside monitors; wide table) ------------
VITAL_PERIODIC: dict[str, SeriesVar] = {
    "temperature": SeriesVar("vp_temperature", "degC", 25, 46),
    "sao2": SeriesVar("vp_spo2", "%", 0, 100),
    "heartrate": SeriesVar("vp_heart_rate", "beats/min", 0, 300),
    "respiration": SeriesVar("vp_resp_rate", "breaths/min", 0, 100),
    "cvp": SeriesVar("vp_cvp", "mmHg", -10, 50),
    "etco2": SeriesVar("vp_etco2", "mmHg", 0, 100),
    "systemicsystolic": SeriesVar("vp_ibp_systolic", "mmHg", 1, 300),
    "systemicdiastolic": SeriesVar("vp_ibp_diastolic", "mmHg", 1, 200),
    "systemicmean": SeriesVar("vp_ibp_mean", "mmHg", 1, 250),
    "pasystolic": SeriesVar("vp_pa_systolic", "mmHg", 1, 150),
    "padiastolic": SeriesVar("vp_pa_diastolic", "mmHg", 1, 100),
    "pamean": SeriesVar("vp_pa_mean", "mmHg", 1, 120),
    "icp": SeriesVar("vp_icp", "mmHg", -10, 100),
}

# --- respiratoryCharting (long table: respchartvaluelabel -> value) --------------------------------------
_FIO2 = SeriesVar("fio2", "%", 21, 100, fraction_to_percent=True)
_PEEP = SeriesVar("peep", "cmH2O", 0, 40)
_O2FLOW = SeriesVar("o2_flow", "L/min", 0, 80)
RESPIRATORY_CHARTING: dict[str, SeriesVar] = {
    "FiO2": _FIO2,
    "FIO2 (%)": _FIO2,
    "O2 Percentage": _FIO2,
    "RR (patient)": SeriesVar("resp_rate_patient", "breaths/min", 0, 80),
    "Total RR": SeriesVar("resp_rate_total", "breaths/min", 0, 80),
    "Vent Rate": SeriesVar("vent_rate_set", "breaths/min", 0, 80),
    "PEEP": _PEEP,
    "PEEP/CPAP": _PEEP,
    "Tidal Volume (set)": SeriesVar("tidal_volume_set", "mL", 0, 2000),
    "Exhaled TV (patient)": SeriesVar("tidal_volume_exhaled", "mL", 0, 2000),
    "Exhaled MV": SeriesVar("minute_volume", "L/min", 0, 60),
    "LPM O2": _O2FLOW,
    "Oxygen Flow Rate": _O2FLOW,
    "Mean Airway Pressure": SeriesVar("mean_airway_pressure", "cmH2O", 0, 60),
    "Peak Insp. Pressure": SeriesVar("peak_insp_pressure", "cmH2O", 0, 100),
    "Plateau Pressure": SeriesVar("plateau_pressure", "cmH2O", 0, 80),
    "Pressure Support": SeriesVar("pressure_support", "cmH2O", 0, 50),
    "SaO2": SeriesVar("sao2", "%", 0, 100),
    "Compliance": SeriesVar("compliance", "mL/cmH2O", 0, 300),
}

# --- intakeOutput ---------------------------------------------------------------------------------------
# Totals are per charting time (every row at one offset repeats them): summed over the distinct offsets
# of an hour they give that hour's volumes.
INTAKE_OUTPUT_TOTALS: dict[str, SeriesVar] = {
    "intaketotal": SeriesVar("intake_ml", "mL/h", 0, 20000, agg="sum"),
    "outputtotal": SeriesVar("output_ml", "mL/h", 0, 20000, agg="sum"),
    "nettotal": SeriesVar("net_balance_ml", "mL/h", -20000, 20000, agg="sum"),
}
URINE = SeriesVar("urine_ml", "mL/h", 0, 5000, agg="sum")
URINE_PATH_PREFIX = "flowsheet|Flowsheet Cell Labels|I&O|Output (ml)|"
URINE_LABELS: frozenset[str] = frozenset(
    {
        "Urine",
        "urine",
        "URINE",
        "URINE CATHETER",
        "Urinary Catheter Output: Indwelling/Continuous Ure",
        "Urinary Catheter Output: Indwelling/Continuous Sup",
        "Urinary Catheter Output: Straight/Intermittent Ure",
        "Urinary Catheter Output: Condom External",
        "Indwelling Catheter Output",
        "Urine Output-Foley",
        "Urine Output-FOLEY",
        "Foley cath",
        "Foley Cath",
        "foley",
        "Voided Amount",
        "Urine, void:",
        "SN Urine Output(ml)",
        "Output (mL)-Urethral Catheter",
        "Output (mL)-Urethral Catheter 14 Fr.",
        "Output (mL)-Urethral Catheter Non-latex 16 Fr.",
        "Output (mL)-Urethral Catheter Non-latex 18 Fr.",
        "Output (mL)-Urethral Catheter Straight-tip 14 Fr.",
        "Output (mL)-Urethral Catheter Latex 14 Fr.",
        "Output (mL)-Urethral Catheter Latex;Straight-tip 14 Fr.",
        "Output (mL)-Urethral Catheter Non-latex;Temperature probe 16 Fr.",
        "Output (mL)-Urethral Catheter Temperature probe 16 Fr.",
        "Output (mL)-External Urinary Catheter",
        "Output (mL)-Straight Catheter",
        "Urine Output (mL)-Urethral Catheter",
    }
)
BODYWEIGHT_LABEL = "Bodyweight (kg)"
BODYWEIGHT = SeriesVar("bodyweight", "kg", 20, 350)

# --- nurseCharting (full database only; long table keyed by (celltypevallabel, celltypevalname)) ---------
NURSE_CHARTING: dict[tuple[str, str], SeriesVar] = {
    ("Heart Rate", "Heart Rate"): SeriesVar("nc_heart_rate", "beats/min", 0, 300),
    ("Respiratory Rate", "Respiratory Rate"): SeriesVar("nc_resp_rate", "breaths/min", 0, 100),
    ("O2 Saturation", "O2 Saturation"): SeriesVar("nc_spo2", "%", 0, 100),
    ("Non-Invasive BP", "Non-Invasive BP Systolic"): SeriesVar("nc_nibp_systolic", "mmHg", 25, 300),
    ("Non-Invasive BP", "Non-Invasive BP Diastolic"): SeriesVar("nc_nibp_diastolic", "mmHg", 1, 200),
    ("Non-Invasive BP", "Non-Invasive BP Mean"): SeriesVar("nc_nibp_mean", "mmHg", 1, 250),
    ("Invasive BP", "Invasive BP Systolic"): SeriesVar("nc_ibp_systolic", "mmHg", 1, 300),
    ("Invasive BP", "Invasive BP Diastolic"): SeriesVar("nc_ibp_diastolic", "mmHg", 1, 200),
    ("Invasive BP", "Invasive BP Mean"): SeriesVar("nc_ibp_mean", "mmHg", 1, 250),
    ("Temperature", "Temperature (C)"): SeriesVar("nc_temperature", "degC", 25, 46),
    ("Glasgow coma score", "GCS Total"): SeriesVar("nc_gcs_total", "points", 3, 15),
    ("Glasgow coma score", "Eyes"): SeriesVar("nc_gcs_eyes", "points", 1, 4),
    ("Glasgow coma score", "Motor"): SeriesVar("nc_gcs_motor", "points", 1, 6),
    ("Glasgow coma score", "Verbal"): SeriesVar("nc_gcs_verbal", "points", 1, 5),
    ("Bedside Glucose", "Bedside Glucose"): SeriesVar("nc_bedside_glucose", "mg/dL", 10, 2000),
}

# --- lab (full database only; long table keyed by labname; value = labresult) ----------------------------
LAB: dict[str, SeriesVar] = {
    "albumin": SeriesVar("lab_albumin", "g/dL", 0.5, 6.5),
    "total bilirubin": SeriesVar("lab_bilirubin", "mg/dL", 0.1, 70),
    "BUN": SeriesVar("lab_bun", "mg/dL", 1, 280),
    "calcium": SeriesVar("lab_calcium", "mg/dL", 1, 20),
    "chloride": SeriesVar("lab_chloride", "mmol/L", 50, 150),
    "creatinine": SeriesVar("lab_creatinine", "mg/dL", 0.1, 28),
    "glucose": SeriesVar("lab_glucose", "mg/dL", 10, 2000),
    "bicarbonate": SeriesVar("lab_bicarbonate", "mmol/L", 2, 60),
    "Hct": SeriesVar("lab_hematocrit", "%", 5, 75),
    "Hgb": SeriesVar("lab_hemoglobin", "g/dL", 1, 25),
    "PT - INR": SeriesVar("lab_inr", "ratio", 0.5, 15),
    "PTT": SeriesVar("lab_ptt", "s", 5, 500),
    "lactate": SeriesVar("lab_lactate", "mmol/L", 0.1, 30),
    "platelets x 1000": SeriesVar("lab_platelets", "10^3/uL", 1, 2000),
    "potassium": SeriesVar("lab_potassium", "mmol/L", 1, 12),
    "sodium": SeriesVar("lab_sodium", "mmol/L", 90, 215),
    "WBC x 1000": SeriesVar("lab_wbc", "10^3/uL", 0.1, 500),
    "pH": SeriesVar("lab_ph", "pH", 6.5, 8.0),
    "paO2": SeriesVar("lab_pao2", "mmHg", 10, 700),
    "paCO2": SeriesVar("lab_paco2", "mmHg", 5, 200),
    "magnesium": SeriesVar("lab_magnesium", "mg/dL", 0.3, 10),
    "phosphate": SeriesVar("lab_phosphate", "mg/dL", 0.3, 20),
    "ALT (SGPT)": SeriesVar("lab_alt", "U/L", 1, 20000),
    "AST (SGOT)": SeriesVar("lab_ast", "U/L", 1, 20000),
    "alkaline phos.": SeriesVar("lab_alp", "U/L", 1, 5000),
    "troponin - I": SeriesVar("lab_troponin_i", "ng/mL", 0, 1000),
}

# --- apache (tabular, day 1) ----------------------------------------------------------------------------
APACHE_APS: dict[str, str] = {
    # column -> unit; APACHE IV day-1 worst values; feature name "aps_<column>"; -1 means not recorded
    "intubated": "0/1",
    "vent": "0/1",
    "dialysis": "0/1",
    "eyes": "GCS points",
    "motor": "GCS points",
    "verbal": "GCS points",
    "meds": "0/1 (GCS not assessable because of sedation)",
    "urine": "mL/day",
    "wbc": "10^3/uL",
    "temperature": "degC",
    "respiratoryrate": "breaths/min",
    "sodium": "mmol/L",
    "heartrate": "beats/min",
    "meanbp": "mmHg",
    "ph": "pH",
    "hematocrit": "%",
    "creatinine": "mg/dL",
    "albumin": "g/dL",
    "pao2": "mmHg",
    "pco2": "mmHg",
    "bun": "mg/dL",
    "glucose": "mg/dL",
    "bilirubin": "mg/dL",
    "fio2": "%",
}
APACHE_PRED: dict[str, str] = {
    # column -> unit; admission comorbidities and day-1 interventions; feature name "pred_<column>".
    # Never read: diedinhospital, dischargelocation, var03hspxlos (outcome and discharge), sicuday, saps3*,
    # and the columns that repeat apacheApsVar (meds, verbal, motor, eyes, pao2, fio2, creatinine, day1*)
    "thrombolytics": "0/1",
    "aids": "0/1",
    "hepaticfailure": "0/1",
    "lymphoma": "0/1",
    "metastaticcancer": "0/1",
    "leukemia": "0/1",
    "immunosuppression": "0/1",
    "cirrhosis": "0/1",
    "diabetes": "0/1",
    "electivesurgery": "0/1",
    "activetx": "0/1",
    "readmit": "0/1",
    "ima": "0/1",
    "midur": "0/1",
    "ventday1": "0/1",
    "oobventday1": "0/1",
    "oobintubday1": "0/1",
    "graftcount": "count",
    "ejectfx": "%",
    "visitnumber": "count",
}
APACHE_RANGES: dict[str, tuple[float | None, float | None]] = {
    # column -> plausible (low, high), bounds included, for the APACHE columns that are not 0/1 flags (those
    # are checked against [0, 1]). Physical limits, wide on purpose: the pipeline masks (NaN, counted) a value
    # outside, and no value of the demo is (its extremes: urine 42,207 mL/day, temperature 22.2 degC).
    "eyes": (1, 4),
    "motor": (1, 6),
    "verbal": (1, 5),
    "urine": (0, 50000),
    "wbc": (0, 500),
    "temperature": (15, 46),
    "respiratoryrate": (0, 100),
    "sodium": (90, 215),
    "heartrate": (0, 300),
    "meanbp": (0, 300),
    "ph": (6.5, 8.0),
    "hematocrit": (5, 75),
    "creatinine": (0, 30),
    "albumin": (0.5, 6.5),
    "pao2": (10, 800),
    "pco2": (5, 200),
    "bun": (1, 300),
    "glucose": (10, 2000),
    "bilirubin": (0, 80),
    "fio2": (21, 100),
    "graftcount": (0, 10),
    "ejectfx": (0, 100),
    "visitnumber": (1, None),
}
PATIENT_NUMERIC: dict[str, tuple[str, str, float, float]] = {
    # column -> (feature name, unit, lo, hi); admission values only (dischargeweight is never read)
    "age": ("age", "years", 0, 90),
    "admissionheight": ("admission_height", "cm", 100, 250),
    "admissionweight": ("admission_weight", "kg", 20, 350),
}
AGE_TOP_CODE = {"> 89": 90.0}
UNIT_TYPES: tuple[str, ...] = (
    "Med-Surg ICU",
    "MICU",
    "SICU",
    "CCU-CTICU",
    "CTICU",
    "CSICU",
    "Cardiac ICU",
    "Neuro ICU",
)
UNIT_ADMIT_SOURCES: tuple[str, ...] = (
    "Emergency Department",
    "Floor",
    "Operating Room",
    "ICU to SDU",
    "Direct Admit",
    "Recovery Room",
    "Step-Down Unit (SDU)",
    "Acute Care/Floor",
    "ICU",
    "Other ICU",
    "Other Hospital",
    "PACU",
    "Chest Pain Center",
    "Observation",
    "Other",
)

APACHE_LOG: frozenset[str] = frozenset({"urine", "wbc", "creatinine", "bun", "glucose", "bilirubin"})
"""APACHE columns that are non-negative and right-skewed: their feature kind carries the log hint."""

# --- admission (tabular, known at unit admission; every stay of patient) ---------------------------------
UNIT_STAY_TYPES: tuple[str, ...] = ("admit", "readmit", "transfer", "stepdown/other")
HOSPITAL_ADMIT_SOURCES: tuple[str, ...] = UNIT_ADMIT_SOURCES  # eICU uses one value set for both columns
PRE_ICU_LOS_RANGE = (0.0, 24.0 * 365)
"""Hours from hospital to unit admission (``-hospitaladmitoffset / 60``). A hospital admission after the
unit admission (a positive offset, 15 stays of the demo) is inconsistent and reads as missing."""
UNIT_VISIT_RANGE = (1, 50)

ADMIT_DX_PREFIX = "admission diagnosis|"
ADMIT_DX_ALL = "All Diagnosis"
"""admissionDx paths ``admission diagnosis|All Diagnosis|<Operative or Non-operative>|Diagnosis|<organ
system>|<diagnosis>`` hold the APACHE admission diagnosis of the stay."""
ADMIT_DX_OPERATIVE = {"Operative": 1.0, "Non-operative": 0.0}
ADMIT_DX_ELECTIVE = {"admission diagnosis|Elective|Yes": 1.0, "admission diagnosis|Elective|No": 0.0}
ADMIT_DX_FROM_OR = {
    "admission diagnosis|Was the patient admitted from the O.R. or went to the O.R. within 4 hours of admission?"
    "|Yes": 1.0,
    "admission diagnosis|Was the patient admitted from the O.R. or went to the O.R. within 4 hours of admission?"
    "|No": 0.0,
}
ADMIT_DX_TRANSFER_48H = (
    "admission diagnosis|Patient transferred from another hospital to the current hospital within 48 hours prior "
    "to ICU admission"
)
ADMIT_ORGAN_SYSTEMS: tuple[str, ...] = (
    "Cardiovascular",
    "Respiratory",
    "Neurology",
    "Gastrointestinal",
    "Metabolic/Endocrine",
    "Genitourinary",
    "Hematology",
    "Musculoskeletal/Skin",
    "Trauma",
    "Transplant",
)
ADMIT_DX_GROUPS: tuple[tuple[str, str], ...] = (
    # (group, regular expression on the diagnosis name); the first match wins, no match is "Other".
    ("Sepsis", r"^Sepsis"),
    ("Cardiac arrest", r"^Cardiac arrest|^Nontraumatic coma due to anoxia"),
    ("Cardiogenic shock", r"^Shock, cardiogenic"),
    ("Acute coronary syndrome", r"^Infarction, acute myocardial|^MI admitted|^Angina, unstable"),
    ("Heart failure", r"^CHF|^Cardiomyopathy"),
    ("Arrhythmia", r"^Rhythm disturbance"),
    ("Chest pain", r"^Chest pain|^Angina, stable"),
    (
        "Cardiac surgery",
        r"^CABG|valve (replacement|repair|surgery)|^Aortic and Mitral valve|open.heart surgery|^Heart transplant",
    ),
    ("Vascular", r"^Aneurysm|^Endarterectomy|^Graft|^Embolectomy|^Thrombectomy|^Thrombus, arterial|^Vascular"),
    ("Pneumonia", r"^Pneumonia"),
    (
        "Respiratory failure",
        r"^ARDS|^Arrest, respiratory|^Obstruction-airway|^Weaning from mechanical|^Respiratory - medical",
    ),
    ("COPD, asthma", r"^Emphysema|^Asthma|^Restrictive lung"),
    ("Pulmonary embolism", r"^Embolus, pulmonary"),
    (
        "Stroke, intracranial haemorrhage",
        r"^CVA|^Hemorrhage/hematoma.*intracranial|^Subarachnoid|^Hematoma,? subdural|^Hematoma-epidural",
    ),
    ("Seizures", r"^Seizures"),
    ("Hepatic failure", r"^Hepatic failure|^Encephalopathy, hepatic"),
    ("Coma, encephalopathy", r"^Coma|^Encephalopath"),
    ("GI bleeding", r"^Bleeding"),
    ("Diabetic emergency", r"^Diabetic|^Hypoglycemia"),
    ("Overdose, withdrawal", r"^Overdose|^Toxicity|withdrawal"),
    ("Renal failure", r"^Renal failure"),
    ("Trauma", r"trauma(, surgery for)?$|^Trauma"),
)
ADMIT_DX_OTHER = "Other"

# --- exam_values (tabular, physicalExam entries in the window) ------------------------------------------
EXAM_PREFIX = "notes/Progress Notes/Physical Exam/Physical Exam/"
EXAM_VITAL_PREFIX = EXAM_PREFIX + "Constitutional/Vital Sign and Physiological Data/"


@dataclass(frozen=True)
class ExamVar:
    """One charted physicalExam number: feature name, how the window's entries combine (``last``: the
    latest offset, ties by row id; ``min``; ``max``), unit and plausible range."""

    name: str
    agg: str
    unit: str
    lo: float
    hi: float
    fraction_to_percent: bool = False


def _exam_trio(path: str, item: str, name: str, unit: str, lo: float, hi: float) -> dict[str, ExamVar]:
    return {
        f"{path}/{item} Current": ExamVar(f"exam_{name}_current", "last", unit, lo, hi),
        f"{path}/{item} Lowest": ExamVar(f"exam_{name}_lowest", "min", unit, lo, hi),
        f"{path}/{item} Highest": ExamVar(f"exam_{name}_highest", "max", unit, lo, hi),
    }


EXAM_VITALS: dict[str, ExamVar] = {
    # path under EXAM_VITAL_PREFIX -> variable; the value is physicalexamtext
    **_exam_trio("HR", "HR", "hr", "beats/min", 0, 300),
    **_exam_trio("BP (systolic)", "BP (systolic)", "sbp", "mmHg", 25, 300),
    **_exam_trio("BP (diastolic)", "BP (diastolic)", "dbp", "mmHg", 1, 200),
    **_exam_trio("Resp Rate", "Resp", "resp_rate", "breaths/min", 0, 100),
    **_exam_trio("O2 Sat%", "O2 Sat%", "spo2", "%", 0, 100),
    "FiO2%/FiO2%": ExamVar("exam_fio2", "last", "%", 21, 100, fraction_to_percent=True),
    "PEEP/PEEP": ExamVar("exam_peep", "last", "cmH2O", 0, 40),
    "Vent Rate/Vent Rate Current": ExamVar("exam_vent_rate", "last", "breaths/min", 0, 80),
}
EXAM_GCS: dict[str, tuple[str, float, float]] = {
    # GCS component (path EXAM_PREFIX + "Neurologic/GCS/<component> Score/<n>") -> (feature, lo, hi)
    "Eyes": ("exam_gcs_eyes", 1, 4),
    "Verbal": ("exam_gcs_verbal", 1, 5),
    "Motor": ("exam_gcs_motor", 1, 6),
}
EXAM_GCS_TOTAL = ("exam_gcs_total", 3, 15)  # path EXAM_PREFIX + "Neurologic/GCS/<n>"
EXAM_GCS_MEDS = ("Neurologic/GCS/Score/unable to score due to meds", "Neurologic/GCS/Score/estimated due to meds")
EXAM_RESP_MODE = EXAM_VITAL_PREFIX + "Resp Mode/"  # .../Resp Mode/ventilated or .../Resp Mode/spontaneous

# --- treatments (tabular indicators, treatment and infusionDrug rows in the window) --------------------
TREATMENT_PATTERNS: dict[str, tuple[str, str | None]] = {
    # feature -> (regular expression the treatmentstring must match, one it must not match), case-insensitive
    "tx_mechanical_ventilation": (r"mechanical ventilation", r"non-invasive"),
    "tx_noninvasive_ventilation": (r"non-invasive ventilation", None),
    "tx_oxygen_therapy": (r"oxygen therapy", None),
    "tx_vasopressor": (r"\|vasopressors|norepinephrine|\|epinephrine|dopamine|vasopressin|phenylephrine", None),
    "tx_inotrope": (r"inotropic agent|dobutamine|milrinone", None),
    "tx_dialysis": (r"dialysis|C V V H|CVVH|ultrafiltration|renal replacement", None),
    "tx_blood_products": (r"blood product|transfusion|packed red blood cells|fresh frozen plasma|platelet conc", None),
    "tx_antibacterial": (r"antibacterial", r"prophylactic"),
}
TREATMENT_COUNT = "tx_n_distinct"  # distinct treatmentstrings in the window (a count, log hint)
INFUSION_AGENTS: dict[str, str] = {
    # feature -> regular expression on drugname, case-insensitive; a row counts unless its drugrate parses to
    # a number <= 0 (a rate of 0 charts the infusion as off)
    "inf_norepinephrine": r"norepinephrine|levophed",
    "inf_epinephrine": r"\bepinephrine|adrenalin",
    "inf_dopamine": r"dopamine",
    "inf_vasopressin": r"vasopressin",
    "inf_phenylephrine": r"phenylephrine|neo-?synephrine",
    "inf_dobutamine": r"dobutamine",
    "inf_milrinone": r"milrinone",
    "inf_sedative": r"propofol|diprivan|midazolam|versed|dexmedetomidine|precedex|lorazepam",
    "inf_opioid": r"fentanyl|morphine|hydromorphone|dilaudid",
    "inf_insulin": r"insulin",
    "inf_antiarrhythmic": r"amiodarone|diltiazem|esmolol|lidocaine",
    "inf_vasodilator": r"nitroglycerin|nitroprusside|nicardipine",
}
INFUSION_GROUPS: dict[str, tuple[str, ...]] = {
    # feature -> the agents any of which sets it
    "inf_vasopressor": (
        "inf_norepinephrine",
        "inf_epinephrine",
        "inf_dopamine",
        "inf_vasopressin",
        "inf_phenylephrine",
    ),
    "inf_inotrope": ("inf_dobutamine", "inf_milrinone"),
}
INFUSION_COUNT = "inf_n_vasoactive"  # distinct vasopressor and inotrope agents infused (0 to 7)

# --- care_limitation (opt-in: a clinician's decision that predicts death) --------------------------------
CARE_LIMITATION_GROUP = "Care Limitation"  # carePlanGeneral.cplgroup
CARE_LIMITATION_VALUES: dict[str, tuple[str, ...]] = {
    # feature -> cplitemvalue values (any in the window sets it)
    "cl_full_therapy": ("Full therapy",),
    "cl_do_not_resuscitate": ("Do not resuscitate", "No CPR"),
    "cl_comfort_measures_only": ("Comfort measures only",),
    "cl_other_limitation": (
        "No intubation",
        "No cardioversion",
        "No vasopressors/inotropes",
        "No augmentation of care",
        "No blood products",
    ),
}

assert set(APACHE_RANGES) == {c for c, unit in {**APACHE_APS, **APACHE_PRED}.items() if not unit.startswith("0/1")}

"""eICU Collaborative Research Database adapters: ``eicu`` (any eICU-CRD root) and ``eicu-demo`` (bundled).

One row per ICU stay (``patientunitstayid``, every row of ``patient``), grouped by ``uniquepid``. Every
input comes from the first 24 hours of the stay (offsets 0 to 1,440 minutes, both inclusive) and every
column is chosen by an allow-list (:mod:`omnifuse.extract.datasets.eicu_vars`); ``docs/eicu.md`` describes
the modalities, the allow-lists and the leakage rules.

Modalities (``inputs`` returns ``None`` where the source has nothing for the stay in the window):

- ``vitals``: array, time series ``[24, F]`` float32, hourly bins, NaN = not observed;
- ``apache``: array, tabular ``[F]`` float32 (APACHE day-1 physiology, admission comorbidities, age, sex,
  admission height and weight, unit type and admission source one-hot), NaN = not recorded (-1 or empty);
- ``history``, ``diagnosis``, ``exam``: text.

Task ``mortality`` (binary, class ``expired``): hospital discharge status; stays without one are kept with
the label masked. Reference ``apache_iva``: APACHE IVa predicted hospital mortality (never an input).

Everything is computed once, on the first call that needs it, and kept in the adapter: ``inputs`` for a
block of rows only gathers precomputed results.
"""

from __future__ import annotations

import importlib.resources
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from omnifuse.cache.schema import TaskSpec
from omnifuse.extract.datasets import eicu_vars as V
from omnifuse.extract.datasets.base import Cohort, Item, RawModality, Skip
from omnifuse.extract.datasets.registry import register_adapter

log = logging.getLogger(__name__)

DEMO_DIRNAME = "eicu-demo-2.0.1"
TEXT_MODALITIES = ("history", "diagnosis", "exam")
HISTORY_PROVENANCE = ["admissionDx+pastHistory", "admissionDx", "pastHistory"]
_TABLE_NAMES = (
    "patient",
    "apachePatientResult",
    "apacheApsVar",
    "apachePredVar",
    "pastHistory",
    "admissionDx",
    "diagnosis",
    "physicalExam",
    "vitalAperiodic",
    "vitalPeriodic",
    "respiratoryCharting",
    "intakeOutput",
    "nurseCharting",
    "lab",
)
_TEXT_SOURCES = {"history": ("pastHistory", "admissionDx"), "diagnosis": ("diagnosis",), "exam": ("physicalExam",)}
_VITAL_SOURCES = ("vitalAperiodic", "respiratoryCharting", "intakeOutput", "vitalPeriodic", "nurseCharting", "lab")
"""Demo sources first: on the full database the demo's features stay a prefix of the feature list."""
_LONG_SCHEMA = {"stay": pl.Int64, "off": pl.Int64, "ord": pl.Int64, "feat": pl.String, "value": pl.Float64}


class EicuDataError(ValueError):
    """The eICU files are missing or not laid out as eICU-CRD."""


def demo_root() -> Path:
    """The bundled eICU-CRD demo 2.0.1 (``omnifuse/data/eicu-demo-2.0.1``)."""
    root = Path(str(importlib.resources.files("omnifuse") / "data" / DEMO_DIRNAME))
    if not (root / "patient.csv.gz").is_file():
        raise EicuDataError(f"the bundled eICU demo is not installed at {root} (patient.csv.gz is missing)")
    return root


# ---------------------------------------------------------------------------------------------- reading
def find_tables(root: Path) -> dict[str, Path]:
    """eICU table name -> file for each table present in ``root`` (``name.csv.gz`` or ``name.csv``, any case)."""
    by_lower = {p.name.lower(): p for p in root.iterdir() if p.is_file()}
    found: dict[str, Path] = {}
    for name in _TABLE_NAMES:
        for ext in (".csv.gz", ".csv"):
            p = by_lower.get(f"{name.lower()}{ext}")
            if p is not None:
                found[name] = p
                break
    return found


def _scan(path: Path) -> pl.LazyFrame:
    """Every column as a string (numbers are parsed where used, a bad cell becoming null), names lower-case."""
    lf = pl.scan_csv(path, infer_schema=False, quote_char='"')
    names = lf.collect_schema().names()
    return lf.rename({n: n.strip().lower() for n in names if n != n.strip().lower()})


def _num(col: str) -> pl.Expr:
    return pl.col(col).str.strip_chars().cast(pl.Float64, strict=False)


def _int(col: str) -> pl.Expr:
    return _num(col).round(0).cast(pl.Int64)


def _str(col: str) -> pl.Expr:
    return pl.col(col).fill_null("").str.strip_chars()


def _in_window(expr: pl.Expr) -> pl.Expr:
    return expr.is_between(0, V.WINDOW_MIN, closed="both")


def _not_after_window(expr: pl.Expr) -> pl.Expr:
    """For an entry or revision offset: null (not given) or at most 1,440 minutes."""
    return expr.is_null() | (expr <= V.WINDOW_MIN)


def _require(lf: pl.LazyFrame, table: str, cols: list[str]) -> None:
    have = set(lf.collect_schema().names())
    missing = [c for c in cols if c not in have]
    if missing:
        raise EicuDataError(f"eICU table {table!r} lacks columns {missing}; is this an eICU-CRD 2.0 export?")


# ----------------------------------------------------------------------------------------------- vitals
def _long_wide(lf: pl.LazyFrame, table: str, id_col: str, off_col: str, spec: dict[str, V.SeriesVar]) -> pl.LazyFrame:
    """A wide table (one column per variable) -> long rows (stay, off, ord, feat, value) in the window."""
    _require(lf, table, ["patientunitstayid", id_col, off_col, *spec])
    base = lf.select(
        stay=_int("patientunitstayid"), off=_int(off_col), ord=_int(id_col), **{c: _num(c) for c in spec}
    ).filter(_in_window(pl.col("off")))
    long = base.unpivot(index=["stay", "off", "ord"], on=list(spec), variable_name="src", value_name="value")
    mapping = {c: v.name for c, v in spec.items()}
    return long.drop_nulls("value").select(
        "stay", "off", "ord", feat=pl.col("src").replace_strict(mapping, return_dtype=pl.String), value="value"
    )


def _long_keyed(
    lf: pl.LazyFrame,
    table: str,
    id_col: str,
    off_col: str,
    entry_col: str | None,
    key: pl.Expr,
    key_cols: list[str],
    value_col: str,
    mapping: dict[str, str],
) -> pl.LazyFrame:
    """A long table (label -> value) -> long rows for the allow-listed labels, in the window."""
    entry = [entry_col] if entry_col else []
    _require(lf, table, ["patientunitstayid", id_col, off_col, value_col, *key_cols, *entry])
    value = pl.col(value_col).str.strip_chars().str.strip_suffix("%").str.strip_chars().cast(pl.Float64, strict=False)
    cond = _in_window(_int(off_col)) & key.is_in(list(mapping))
    if entry_col:
        cond = cond & _not_after_window(_int(entry_col))
    return (
        lf.filter(cond)
        .select(
            stay=_int("patientunitstayid"),
            off=_int(off_col),
            ord=_int(id_col),
            feat=key.replace_strict(mapping, return_dtype=pl.String),
            value=value,
        )
        .drop_nulls("value")
    )


def _long_intake_output(lf: pl.LazyFrame) -> pl.LazyFrame:
    """intakeOutput -> hourly intake, output, net balance (per-time totals), urine (summed cells), weight."""
    cols = ["patientunitstayid", "intakeoutputid", "intakeoutputoffset", "intakeoutputentryoffset", "cellpath",
            "celllabel", "cellvaluenumeric", *V.INTAKE_OUTPUT_TOTALS]
    _require(lf, "intakeOutput", cols)
    base = lf.filter(
        _in_window(_int("intakeoutputoffset")) & _not_after_window(_int("intakeoutputentryoffset"))
    ).select(
        stay=_int("patientunitstayid"),
        off=_int("intakeoutputoffset"),
        ord=_int("intakeoutputid"),
        path=_str("cellpath"),
        label=_str("celllabel"),
        cell=_num("cellvaluenumeric"),
        **{c: _num(c) for c in V.INTAKE_OUTPUT_TOTALS},
    )
    io = "flowsheet|Flowsheet Cell Labels|I&O|"
    is_in = pl.col("path").str.starts_with(io + "Intake")
    is_out = pl.col("path").str.starts_with(io + "Output")
    # A total counts only at charting times that hold a cell of its kind (a weight-only time has totals of 0
    # that mean "nothing charted", not "no intake").
    per_time = base.group_by("stay", "off").agg(
        pl.col("ord").min(),
        has_in=is_in.any(),
        has_out=is_out.any(),
        **{c: pl.col(c).sort_by("ord").first() for c in V.INTAKE_OUTPUT_TOTALS},
    )
    keep = {"intaketotal": pl.col("has_in"), "outputtotal": pl.col("has_out"),
            "nettotal": pl.col("has_in") | pl.col("has_out")}
    parts = [
        per_time.filter(cond).select("stay", "off", "ord", feat=pl.lit(V.INTAKE_OUTPUT_TOTALS[c].name), value=pl.col(c))
        for c, cond in keep.items()
    ]
    urine = base.filter(
        pl.col("path").str.starts_with(V.URINE_PATH_PREFIX) & pl.col("label").is_in(list(V.URINE_LABELS))
    )
    parts.append(urine.select("stay", "off", "ord", feat=pl.lit(V.URINE.name), value=pl.col("cell")))
    weight = base.filter((pl.col("label") == V.BODYWEIGHT_LABEL) & pl.col("path").str.starts_with(io + "Weight"))
    parts.append(weight.select("stay", "off", "ord", feat=pl.lit(V.BODYWEIGHT.name), value=pl.col("cell")))
    return pl.concat([p.drop_nulls("value") for p in parts], how="vertical")


def _vital_sources(tables: dict[str, Path]) -> tuple[list[tuple[str, pl.LazyFrame]], list[V.SeriesVar]]:
    """The long frames of the time-series sources present, and the features they define (in order)."""
    out: list[tuple[str, pl.LazyFrame]] = []
    feats: list[V.SeriesVar] = []

    def add(vars_: list[V.SeriesVar]) -> None:
        for v in vars_:
            if v.name not in {f.name for f in feats}:
                feats.append(v)

    for name in _VITAL_SOURCES:
        if name not in tables:
            continue
        lf = _scan(tables[name])
        if name == "vitalAperiodic":
            out.append((name, _long_wide(lf, name, "vitalaperiodicid", "observationoffset", V.VITAL_APERIODIC)))
            add(list(V.VITAL_APERIODIC.values()))
        elif name == "vitalPeriodic":
            out.append((name, _long_wide(lf, name, "vitalperiodicid", "observationoffset", V.VITAL_PERIODIC)))
            add(list(V.VITAL_PERIODIC.values()))
        elif name == "respiratoryCharting":
            mapping = {k: v.name for k, v in V.RESPIRATORY_CHARTING.items()}
            key = _str("respchartvaluelabel")
            out.append((name, _long_keyed(lf, name, "respchartid", "respchartoffset", "respchartentryoffset", key,
                                          ["respchartvaluelabel"], "respchartvalue", mapping)))
            add(list(V.RESPIRATORY_CHARTING.values()))
        elif name == "intakeOutput":
            out.append((name, _long_intake_output(lf)))
            add([*V.INTAKE_OUTPUT_TOTALS.values(), V.URINE, V.BODYWEIGHT])
        elif name == "nurseCharting":
            mapping = {f"{a}\x1f{b}": v.name for (a, b), v in V.NURSE_CHARTING.items()}
            key = pl.concat_str([_str("nursingchartcelltypevallabel"), _str("nursingchartcelltypevalname")],
                                separator="\x1f")
            out.append((name, _long_keyed(lf, name, "nursingchartid", "nursingchartoffset", "nursingchartentryoffset",
                                          key, ["nursingchartcelltypevallabel", "nursingchartcelltypevalname"],
                                          "nursingchartvalue", mapping)))
            add(list(V.NURSE_CHARTING.values()))
        elif name == "lab":
            mapping = {k: v.name for k, v in V.LAB.items()}
            out.append((name, _long_keyed(lf, name, "labid", "labresultoffset", "labresultrevisedoffset",
                                          _str("labname"), ["labname"], "labresult", mapping)))
            add(list(V.LAB.values()))
    return out, feats


@dataclass
class _Sparse:
    """Per-row sparse cells of a ``[T, F]`` array: row-sorted (row, cell = t * F + f, value)."""

    shape: tuple[int, int]
    ptr: np.ndarray  # int64 [N + 1]
    cell: np.ndarray  # int32
    value: np.ndarray  # float32

    def dense(self, row: int) -> np.ndarray | None:
        a, b = int(self.ptr[row]), int(self.ptr[row + 1])
        if a == b:
            return None
        out = np.full(self.shape[0] * self.shape[1], np.nan, dtype=np.float32)
        out[self.cell[a:b]] = self.value[a:b]
        return out.reshape(self.shape)


def _build_vitals(
    sources: list[tuple[str, pl.LazyFrame]], feats: list[V.SeriesVar], stay_index: pl.DataFrame
) -> tuple[_Sparse, dict]:
    """Hourly bins of every allow-listed variable; ``stay_index`` maps stay -> row."""
    n, nf = stay_index.height, len(feats)
    spec = pl.DataFrame(
        {
            "feat": [f.name for f in feats],
            "fidx": list(range(nf)),
            "lo": [float(f.lo) for f in feats],
            "hi": [float(f.hi) for f in feats],
            "frac": [f.fraction_to_percent for f in feats],
            "agg": [f.agg for f in feats],
        },
        schema_overrides={"fidx": pl.Int32},
    )
    if not sources:
        return _Sparse((V.N_BINS, nf), np.zeros(n + 1, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32)), {}
    long = pl.concat([lf.select(list(_LONG_SCHEMA)).cast(_LONG_SCHEMA) for _, lf in sources], how="vertical")
    df = long.collect(engine="streaming")
    counts = {"rows_in_window": df.height}
    df = df.join(spec, on="feat", how="inner").join(stay_index, on="stay", how="inner")
    v = pl.col("value")
    df = df.with_columns(
        value=pl.when(pl.col("frac") & (v > 0) & (v <= 1)).then(v * 100.0).otherwise(v),
    )
    before = df.height
    df = df.filter(pl.col("value").is_between(pl.col("lo"), pl.col("hi"), closed="both"))
    counts["rows_out_of_range"] = before - df.height
    df = df.with_columns(bin=pl.min_horizontal(pl.col("off") // V.BIN_MIN, pl.lit(V.N_BINS - 1)).cast(pl.Int32))
    last = (
        df.filter(pl.col("agg") == "last")
        .sort("row", "fidx", "bin", "off", "ord")
        .group_by("row", "bin", "fidx", maintain_order=True)
        .agg(pl.col("value").last())
    )
    summed = df.filter(pl.col("agg") == "sum").group_by("row", "bin", "fidx").agg(pl.col("value").sum())
    cells = pl.concat([last, summed], how="vertical").sort("row", "bin", "fidx")
    rows = cells["row"].to_numpy().astype(np.int64)
    ptr = np.searchsorted(rows, np.arange(n + 1), side="left").astype(np.int64)
    cell = (cells["bin"].to_numpy().astype(np.int64) * nf + cells["fidx"].to_numpy()).astype(np.int32)
    counts["cells"] = cells.height
    return _Sparse((V.N_BINS, nf), ptr, cell, cells["value"].to_numpy().astype(np.float32)), counts


# ----------------------------------------------------------------------------------------------- apache
def _apache_part(lf: pl.LazyFrame, table: str, id_col: str, cols: dict[str, str], prefix: str) -> pl.DataFrame:
    """One APACHE table, allow-listed columns as floats with -1 and empty read as null; one row per stay."""
    _require(lf, table, ["patientunitstayid", id_col, *cols])
    exprs = {f"{prefix}{c}": pl.when(_num(c) == -1).then(None).otherwise(_num(c)) for c in cols}
    return (
        lf.select(stay=_int("patientunitstayid"), ord=_int(id_col), **exprs)
        .sort("stay", "ord")
        .unique(subset="stay", keep="first", maintain_order=True)
        .drop("ord")
        .collect()
    )


def _patient_features(pat: pl.DataFrame) -> tuple[pl.DataFrame, list[str], list[str], dict]:
    """Age, sex, admission height and weight, unit type and admission source one-hot, per stay."""
    age_raw = pl.col("age").fill_null("").str.strip_chars()
    age = pl.when(age_raw.is_in(list(V.AGE_TOP_CODE))).then(
        age_raw.replace_strict(V.AGE_TOP_CODE, default=None, return_dtype=pl.Float64)
    ).otherwise(age_raw.cast(pl.Float64, strict=False))
    exprs: dict[str, pl.Expr] = {}
    units: dict[str, str] = {}
    for col, (name, unit, lo, hi) in V.PATIENT_NUMERIC.items():
        x = age if col == "age" else _num(col)
        exprs[name] = pl.when(x.is_between(lo, hi, closed="both")).then(x).otherwise(None)
        units[name] = unit
    sex = pl.col("gender").fill_null("").str.strip_chars()
    exprs["sex_male"] = pl.when(sex == "Male").then(1.0).when(sex == "Female").then(0.0).otherwise(None)
    units["sex_male"] = "0/1 (other or unknown: missing)"
    onehot: list[str] = []
    for col, values, prefix in (
        ("unittype", V.UNIT_TYPES, "unit_type="),
        ("unitadmitsource", V.UNIT_ADMIT_SOURCES, "unit_admit_source="),
    ):
        s = pl.col(col).fill_null("").str.strip_chars()
        for val in values:
            exprs[f"{prefix}{val}"] = (s == val).cast(pl.Float64)
            units[f"{prefix}{val}"] = "one-hot"
            onehot.append(f"{prefix}{val}")
    numeric = [V.PATIENT_NUMERIC[c][0] for c in V.PATIENT_NUMERIC]
    out = pat.select("stay", **exprs)
    return out, numeric, onehot, units


# ------------------------------------------------------------------------------------------------- text
def _path_line(path: pl.Expr, value: pl.Expr, prefixes: tuple[str, ...], sep: str) -> pl.Expr:
    """``a/b/C/c`` + value -> ``a / b / C`` (+ ``: value`` when it differs from the last segment)."""
    p = path.fill_null("").str.strip_chars()
    for pre in prefixes:
        p = p.str.strip_prefix(pre)
    segs = p.str.split(sep).list.eval(pl.element().str.strip_chars()).list.eval(pl.element().filter(pl.element() != ""))
    last = segs.list.last().str.to_lowercase()
    prev = segs.list.get(-2, null_on_oob=True).str.to_lowercase()
    segs = pl.when(last == prev).then(segs.list.head(segs.list.len() - 1)).otherwise(segs)
    base = segs.list.join(" / ")
    val = value.fill_null("").str.strip_chars()
    same = (val == "") | (val.str.to_lowercase() == segs.list.last().str.to_lowercase())
    return pl.when(same).then(base).otherwise(pl.concat_str([base, pl.lit(": "), val]))


def _collect_lines(lf: pl.LazyFrame) -> dict[int, list[str]]:
    """(stay, off, key, ord, line) -> stay -> distinct non-empty lines by offset, then key, then row id."""
    df = (
        lf.with_columns(line=pl.col("line").str.strip_chars())
        .filter(pl.col("line").is_not_null() & (pl.col("line") != ""))
        .collect()
        .sort("stay", "off", "key", "ord")
        .group_by("stay", maintain_order=True)
        .agg(pl.col("line").unique(maintain_order=True))
    )
    return dict(zip(df["stay"].to_list(), df["line"].to_list()))


def _off_filter(off: pl.Expr, pre_admission: bool) -> pl.Expr:
    return (off <= V.WINDOW_MIN) if pre_admission else _in_window(off)


def _history_lines(tables: dict[str, Path], pre_admission: bool) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    adx: dict[int, list[str]] = {}
    phx: dict[int, list[str]] = {}
    if "admissionDx" in tables:
        lf = _scan(tables["admissionDx"])
        _require(lf, "admissionDx", ["patientunitstayid", "admissiondxid", "admitdxenteredoffset", "admitdxpath",
                                     "admitdxtext"])
        adx = _collect_lines(
            lf.filter(_off_filter(_int("admitdxenteredoffset"), pre_admission)).select(
                stay=_int("patientunitstayid"), off=_int("admitdxenteredoffset"), key=_str("admitdxpath"),
                ord=_int("admissiondxid"),
                line=_path_line(pl.col("admitdxpath"), pl.col("admitdxtext"), ("admission diagnosis|",), "|"),
            )
        )
    if "pastHistory" in tables:
        lf = _scan(tables["pastHistory"])
        _require(lf, "pastHistory", ["patientunitstayid", "pasthistoryid", "pasthistoryenteredoffset",
                                     "pasthistorypath",
                                     "pasthistoryvaluetext"])
        value = pl.coalesce(pl.col("pasthistoryvaluetext"), pl.col("pasthistoryvalue"))
        phx = _collect_lines(
            lf.filter(_off_filter(_int("pasthistoryenteredoffset"), pre_admission)).select(
                stay=_int("patientunitstayid"), off=_int("pasthistoryenteredoffset"), key=_str("pasthistorypath"),
                ord=_int("pasthistoryid"),
                line=_path_line(pl.col("pasthistorypath"), value,
                                ("notes/Progress Notes/Past History/", "Organ Systems/"), "/"),
            )
        )
    return adx, phx


def _diagnosis_lines(path: Path, pre_admission: bool) -> tuple[dict[int, list[str]], int]:
    lf = _scan(path)
    _require(lf, "diagnosis", ["patientunitstayid", "diagnosisid", "activeupondischarge", "diagnosisoffset",
                               "diagnosisstring"])
    flag = _str("activeupondischarge").str.to_lowercase().is_in(["true", "t", "1", "yes"])
    in_win = _off_filter(_int("diagnosisoffset"), pre_admission)
    flagged = int(lf.filter(in_win & flag).select(pl.len()).collect().item())
    lines = _collect_lines(
        lf.filter(in_win & ~flag).select(
            stay=_int("patientunitstayid"), off=_int("diagnosisoffset"), key=_str("diagnosisstring"),
            ord=_int("diagnosisid"),
            line=_str("diagnosisstring").str.split("|").list.eval(pl.element().str.strip_chars()).list.join(" / "),
        )
    )
    return lines, flagged


def _exam_lines(path: Path, pre_admission: bool) -> dict[int, list[str]]:
    lf = _scan(path)
    _require(lf, "physicalExam", ["patientunitstayid", "physicalexamid", "physicalexamoffset", "physicalexampath",
                                  "physicalexamvalue", "physicalexamtext"])
    value = pl.coalesce(pl.col("physicalexamtext"), pl.col("physicalexamvalue"))
    return _collect_lines(
        lf.filter(_off_filter(_int("physicalexamoffset"), pre_admission)).select(
            stay=_int("patientunitstayid"), off=_int("physicalexamoffset"), key=_str("physicalexampath"),
            ord=_int("physicalexamid"),
            line=_path_line(pl.col("physicalexampath"), value,
                            ("notes/Progress Notes/Physical Exam/", "Physical Exam/"), "/"),
        )
    )


# ---------------------------------------------------------------------------------------------- adapter
@dataclass
class _Prepared:
    cohort: Cohort
    modalities: list[RawModality]
    vitals: _Sparse | None = None
    apache: np.ndarray | None = None  # float32 [N, F]
    apache_present: np.ndarray | None = None  # bool [N]
    texts: dict[str, dict[int, str]] = field(default_factory=dict)  # modality -> row -> text
    provenance: dict[str, dict[int, int]] = field(default_factory=dict)


class EicuAdapter:
    """eICU-CRD 2.0 from a directory of its CSV tables (``.csv`` or ``.csv.gz``); see the module docstring.

    ``pre_admission_text``: also take history, diagnosis and exam entries recorded before unit admission
    (negative offsets). Off by default: the window is 0 to 1,440 minutes for every modality.
    """

    name = "eicu"
    version = "2.0"
    license = (
        "eICU-CRD: PhysioNet Credentialed Health Data License and Data Use Agreement; everything derived from "
        "it, embeddings included, stays under that agreement"
    )

    def __init__(self, root: str | Path, *, pre_admission_text: bool = False) -> None:
        if root is None:
            raise EicuDataError("--dataset eicu needs --root DIR (the eICU-CRD folder); the bundled demo is eicu-demo")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise EicuDataError(f"eICU root {self.root} is not a directory")
        self.tables = find_tables(self.root)
        if "patient" not in self.tables:
            raise EicuDataError(f"no patient.csv.gz or patient.csv in {self.root}: not an eICU-CRD folder")
        self.pre_admission_text = bool(pre_admission_text)
        self._prep: _Prepared | None = None
        absent = [t for t in _TABLE_NAMES if t not in self.tables]
        if absent:
            log.info("eICU at %s: tables not present (their inputs are left out): %s", self.root, ", ".join(absent))

    # -- protocol
    def options(self) -> dict:
        return {
            "root": str(self.root),
            "window_min": [0, V.WINDOW_MIN],
            "bin_min": V.BIN_MIN,
            "pre_admission_text": self.pre_admission_text,
            "tables": sorted(self.tables),
        }

    def cohort(self) -> Cohort:
        return self._prepared().cohort

    def modalities(self) -> list[RawModality]:
        return list(self._prepared().modalities)

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        """Raw inputs for ``rows`` (positions into ``cohort().stay_id``): arrays ``[24, F]`` / ``[F]`` or strings."""
        prep = self._prepared()
        names = [m.name for m in prep.modalities]
        if modality not in names:
            raise KeyError(f"eICU adapter has no modality {modality!r}; it has {names}")
        rows = np.asarray(rows, dtype=np.int64)
        n = len(prep.cohort)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise IndexError(f"rows out of range 0..{n - 1}")
        out: list[Item | Skip | None] = []
        if modality == "vitals":
            assert prep.vitals is not None
            for r in rows:
                a = prep.vitals.dense(int(r))
                out.append(None if a is None else Item(a))
        elif modality == "apache":
            assert prep.apache is not None and prep.apache_present is not None
            for r in rows:
                out.append(Item(prep.apache[r].copy()) if prep.apache_present[r] else None)
        else:
            texts = prep.texts[modality]
            prov = prep.provenance.get(modality, {})
            for r in rows:
                t = texts.get(int(r))
                out.append(None if t is None else Item(t, provenance=prov.get(int(r))))
        return out

    # -- preparation
    def _prepared(self) -> _Prepared:
        if self._prep is None:
            self._prep = self._prepare()
        return self._prep

    def _prepare(self) -> _Prepared:
        t = self.tables
        pat_lf = _scan(t["patient"])
        _require(pat_lf, "patient", ["patientunitstayid", "uniquepid", "hospitaldischargestatus", "gender", "age",
                                     "admissionheight", "admissionweight", "unittype", "unitadmitsource"])
        pat = (
            pat_lf.select(
                stay=_int("patientunitstayid"),
                uniquepid=_str("uniquepid"),
                status=_str("hospitaldischargestatus"),
                gender="gender", age="age", admissionheight="admissionheight", admissionweight="admissionweight",
                unittype="unittype", unitadmitsource="unitadmitsource",
            )
            .collect()
            .sort("stay")
        )
        if pat["stay"].null_count():
            raise EicuDataError("patient table has rows without a numeric patientunitstayid")
        if pat["stay"].n_unique() != pat.height:
            raise EicuDataError("patient table repeats patientunitstayid values")
        if (pat["uniquepid"] == "").any():
            raise EicuDataError("patient table has stays without uniquepid (needed for patient-grouped splits)")
        n = pat.height
        stay_index = pat.select("stay", row=pl.int_range(0, n, dtype=pl.Int64))
        stay_id = pat["stay"].to_numpy().astype(np.int64)
        subject = np.array(pat["uniquepid"].to_list(), dtype=str)

        # labels
        status = pat["status"]
        y = (status == "Expired").to_numpy().astype(np.float32).reshape(n, 1)
        ymask = status.is_in(["Expired", "Alive"]).to_numpy()
        other = sorted(set(status.filter(~status.is_in(["Expired", "Alive", ""])).to_list()))
        if other:
            log.warning("eICU: hospitaldischargestatus values %s read as unlabelled", other)

        # reference: APACHE IVa predicted hospital mortality
        ref = np.zeros(n, np.float32)
        ref_mask = np.zeros(n, bool)
        if "apachePatientResult" in t:
            lf = _scan(t["apachePatientResult"])
            _require(lf, "apachePatientResult", ["patientunitstayid", "apachepatientresultsid", "apacheversion",
                                                 "predictedhospitalmortality"])
            iva = (
                lf.filter(_str("apacheversion") == "IVa")
                .select(stay=_int("patientunitstayid"), ord=_int("apachepatientresultsid"),
                        p=_num("predictedhospitalmortality"))
                .collect()
                .sort("stay", "ord")
                .unique(subset="stay", keep="first", maintain_order=True)
                .join(stay_index, on="stay", how="inner")
                .filter(pl.col("p").is_between(0.0, 1.0, closed="both"))  # -1: not computed
            )
            r = iva["row"].to_numpy()
            ref[r] = iva["p"].to_numpy().astype(np.float32)
            ref_mask[r] = True

        extra: dict = {
            "stays": n,
            "patients": int(pat["uniquepid"].n_unique()),
            "expired": int((status == "Expired").sum()),
            "alive": int((status == "Alive").sum()),
            "unlabelled": int((~ymask).sum()),
            "apache_iva_valid": int(ref_mask.sum()),
            "tables_present": sorted(t),
            "tables_absent": [x for x in _TABLE_NAMES if x not in t],
            "window_min": [0, V.WINDOW_MIN],
        }
        cohort = Cohort(
            stay_id=stay_id,
            subject_id=subject,
            tasks=[TaskSpec("mortality", "binary", ["expired"])],
            labels={"mortality": (y, ymask)},
            references={"apache_iva": (ref, ref_mask)},
            extra=extra,
        )
        prep = _Prepared(cohort=cohort, modalities=[])

        # vitals
        sources, feats = _vital_sources(t)
        if feats:
            prep.vitals, counts = _build_vitals(sources, feats, stay_index)
            extra["vitals_rows"] = counts
            prep.modalities.append(
                RawModality(
                    name="vitals", input="array", kind="timeseries", shape=(V.N_BINS, len(feats)), dtype="float32",
                    feature_names=[f.name for f in feats],
                    preprocessing={
                        "timestep_h": V.BIN_MIN / 60, "hours": V.WINDOW_MIN // 60,
                        "units": {f.name: f.unit for f in feats},
                        "aggregation": {f.name: f.agg for f in feats},
                        "valid_range": {f.name: [f.lo, f.hi] for f in feats},
                        "sources": [s for s, _ in sources],
                        "missing": "NaN (not observed in the hour)",
                    },
                )
            )
        else:
            log.warning("eICU at %s: no time-series table found; vitals left out", self.root)

        # apache
        if "apacheApsVar" in t or "apachePredVar" in t:
            self._prepare_apache(prep, pat, stay_index)
        else:
            log.warning("eICU at %s: no apacheApsVar / apachePredVar; apache left out", self.root)

        # text
        pre = self.pre_admission_text
        if "pastHistory" in t or "admissionDx" in t:
            adx, phx = _history_lines(t, pre)
            texts, prov = {}, {}
            rows_of = dict(zip(stay_index["stay"].to_list(), stay_index["row"].to_list()))
            for stay in sorted(set(adx) | set(phx)):
                r = rows_of.get(stay)
                if r is None:
                    continue
                parts = []
                if stay in adx:
                    parts.append("Admission diagnosis:\n" + "\n".join(adx[stay]))
                if stay in phx:
                    parts.append("Past history:\n" + "\n".join(phx[stay]))
                texts[r] = "\n".join(parts)
                prov[r] = 0 if (stay in adx and stay in phx) else (1 if stay in adx else 2)
            self._add_text(prep, "history", texts, stay_index, HISTORY_PROVENANCE, prov)
        if "diagnosis" in t:
            lines, flagged = _diagnosis_lines(t["diagnosis"], pre)
            extra["diagnosis_rows_active_upon_discharge_excluded"] = flagged
            self._add_text(prep, "diagnosis", self._join(lines, stay_index), stay_index)
        if "physicalExam" in t:
            self._add_text(prep, "exam", self._join(_exam_lines(t["physicalExam"], pre), stay_index), stay_index)

        extra["coverage"] = {m.name: self._coverage(prep, m.name) for m in prep.modalities}
        log.info("eICU: %d stays, %d patients; coverage %s", n, extra["patients"], extra["coverage"])
        return prep

    @staticmethod
    def _join(lines: dict[int, list[str]], stay_index: pl.DataFrame) -> dict[int, str]:
        rows_of = dict(zip(stay_index["stay"].to_list(), stay_index["row"].to_list()))
        return {rows_of[s]: "\n".join(ls) for s, ls in lines.items() if s in rows_of and ls}

    @staticmethod
    def _add_text(prep: _Prepared, name: str, texts: dict[int, str], stay_index: pl.DataFrame,
                  codes: list[str] | None = None, prov: dict[int, int] | None = None) -> None:
        texts = {r: s for r, s in texts.items() if s.strip()}
        prep.texts[name] = texts
        if prov is not None:
            prep.provenance[name] = {r: p for r, p in prov.items() if r in texts}
        prep.modalities.append(RawModality(name=name, input="text", provenance_codes=codes,
                                           preprocessing={"window_min": [0, V.WINDOW_MIN]}))

    @staticmethod
    def _coverage(prep: _Prepared, name: str) -> int:
        if name == "vitals":
            assert prep.vitals is not None
            return int((np.diff(prep.vitals.ptr) > 0).sum())
        if name == "apache":
            assert prep.apache_present is not None
            return int(prep.apache_present.sum())
        return len(prep.texts[name])

    def _prepare_apache(self, prep: _Prepared, pat: pl.DataFrame, stay_index: pl.DataFrame) -> None:
        t = self.tables
        parts: list[pl.DataFrame] = []
        names: list[str] = []
        units: dict[str, str] = {}
        continuous: list[str] = []
        for table, id_col, cols, prefix in (
            ("apacheApsVar", "apacheapsvarid", V.APACHE_APS, "aps_"),
            ("apachePredVar", "apachepredvarid", V.APACHE_PRED, "pred_"),
        ):
            if table not in t:
                continue
            parts.append(_apache_part(_scan(t[table]), table, id_col, cols, prefix))
            for c, unit in cols.items():
                names.append(prefix + c)
                units[prefix + c] = unit
                if not unit.startswith("0/1"):
                    continuous.append(prefix + c)
        present = pl.concat([p.select("stay") for p in parts]).unique()
        wide = present
        for p in parts:
            wide = wide.join(p, on="stay", how="left")
        pfeat, numeric, onehot, punits = _patient_features(pat)
        wide = wide.join(pfeat, on="stay", how="left").join(stay_index, on="stay", how="inner")
        names += numeric + ["sex_male"] + onehot
        units.update(punits)
        continuous += numeric
        n = stay_index.height
        x = np.full((n, len(names)), np.nan, np.float32)
        rows = wide["row"].to_numpy()
        x[rows] = wide.select(names).to_numpy().astype(np.float32)
        mask = np.zeros(n, bool)
        mask[rows] = True
        prep.apache, prep.apache_present = x, mask
        prep.modalities.append(
            RawModality(
                name="apache", input="array", kind="tabular", shape=(len(names),), dtype="float32",
                feature_names=names,
                preprocessing={
                    "continuous": [names.index(c) for c in continuous],
                    "units": units,
                    "missing": "NaN (-1, empty or out of range in the source)",
                    "age_top_code": "'> 89' read as 90",
                },
            )
        )


@register_adapter("eicu")
def build_eicu(root: str | Path | None = None, **options: object) -> EicuAdapter:
    """``omnifuse extract --dataset eicu --root DIR``: an eICU-CRD 2.0 folder."""
    if root is None:
        raise EicuDataError("--dataset eicu needs --root DIR (the eICU-CRD folder); the bundled demo is eicu-demo")
    return EicuAdapter(root, **options)  # type: ignore[arg-type]


class EicuDemoAdapter(EicuAdapter):
    """The bundled eICU-CRD demo 2.0.1 (2,520 stays; ODbL 1.0; lacks lab, vitalPeriodic, nurseCharting)."""

    name = "eicu-demo"
    version = "2.0.1"
    license = (
        "eICU-CRD Demo 2.0.1: Open Database License (ODbL) 1.0; a database derived from it must stay under the "
        "ODbL and attribute the source (see omnifuse/data/eicu-demo-2.0.1/SOURCE.md and LICENSE.txt)"
    )

    def __init__(self, root: str | Path | None = None, *, pre_admission_text: bool = False) -> None:
        if root is not None:
            raise EicuDataError("eicu-demo reads the bundled copy; for another folder use --dataset eicu --root DIR")
        super().__init__(demo_root(), pre_admission_text=pre_admission_text)

    def options(self) -> dict:
        opts = super().options()
        opts["root"] = f"<bundled>/{DEMO_DIRNAME}"
        return opts


register_adapter("eicu-demo")(EicuDemoAdapter)

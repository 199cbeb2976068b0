"""Any dataset described by a CSV or Parquet manifest and a small TOML or YAML spec.

The manifest has one row per stay: ``stay_id`` (integer, unique), ``subject_id`` (the patient, for grouped
splits), label columns, and per modality a column of image paths, volume paths (DICOM folder, NIfTI, .npy),
report text (or text file paths), array file paths (.npy or .csv) or inline numeric columns. An empty cell
means the modality is missing for that row. The spec says which column is which::

    name = "my-cohort"            # optional (default "manifest"); version = "1"; license = "..."
    stay_id = "stay_id"           # column names (these are the defaults)
    subject_id = "subject_id"
    root = "."                    # relative paths resolve against this folder (relative to the manifest)

    [modalities.cxr]
    input = "image"               # image | volume | text | tabular | timeseries | vector
    column = "image_path"
    [modalities.report]
    input = "text"
    column = "report"             # file = true: the column holds paths of UTF-8 text files
    [modalities.labs]
    input = "tabular"
    columns = ["age", "sbp"]      # inline numeric columns; or column = "path" (.npy / .csv) and shape
    ranges = { sbp = [20, 300] }  # plausible range per feature (optional; see below)
    [modalities.vitals]
    input = "timeseries"
    column = "vitals_path"        # .npy [T, F] or .csv with a header; shape = [T, F] (else the first file's)
    feature_names = ["hr", "sbp"] # needed for ranges when the files are .npy

    [tasks.mortality]
    kind = "binary"               # values 0/1, true/false, yes/no; empty = no label
    column = "died"
    [tasks.phenotype]
    kind = "multilabel"
    columns = ["chf", "copd"]     # one 0/1 column per class; or column = "labels", sep = "|", classes = [...]
    [tasks.stage]
    kind = "multiclass"
    column = "stage"
    classes = ["I", "II", "III"]

    [references]
    apache = "apache_score"       # scores that are not inputs
    [splits]
    official = "split"
    [ranges]                      # plausible ranges for every tabular / time-series / vector modality
    hr = [0, 300]                 # with a feature of that name (a modality's own ranges take precedence)
    lactate = [0, inf]            # inf / -inf leave a side open

Ranges: ``[low, high]``, bounds included; ``-inf`` / ``inf`` (``.inf`` or ``null`` in YAML) leave a side
open. At extraction a value outside its feature's range is masked (stored as NaN, "not observed") and
counted in the summary's ``values_masked`` (``outside the plausible range``), as are infinite values and
values too large for float32 (``docs/guarantees.md``); a modality's ranges are recorded in its
``preprocessing["ranges"]``. A range naming a feature the modality does not have, or with low > high, stops
the run naming the key.

A bad spec, a duplicate or non-integer ``stay_id``, a label outside its classes and bytes that are not UTF-8
(the line is named) stop the run with a message naming the manifest row or line. A missing file, an
unreadable array file or an empty report is a ``Skip``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from omnifuse.cache.schema import TaskSpec
from omnifuse.extract.datasets.base import Cohort, Item, RawModality, Skip
from omnifuse.extract.datasets.registry import register_dataset
from omnifuse.extract.values import check_ranges
from omnifuse.options import option

INPUTS = ("image", "volume", "text", "tabular", "timeseries", "vector")
ARRAY_INPUTS = ("tabular", "timeseries", "vector")
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


class ManifestError(ValueError):
    """The manifest or its spec cannot be used as given (the message names the row or key)."""


def load_spec(spec: str | Path | dict) -> dict[str, Any]:
    """A spec dict, or a ``.toml`` / ``.yaml`` / ``.yml`` file holding one."""
    if isinstance(spec, dict):
        return dict(spec)
    path = Path(spec)
    if not path.is_file():
        raise ManifestError(f"spec file {path} does not exist")
    text = _utf8(path.read_bytes(), f"spec {path}")
    try:
        if path.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            raise ManifestError(f"spec {path}: use a .toml, .yaml or .yml file")
    except ManifestError:
        raise
    except Exception as e:  # tomllib.TOMLDecodeError, yaml.YAMLError
        raise ManifestError(f"spec {path} cannot be parsed: {e}") from e
    if not isinstance(data, dict):
        raise ManifestError(f"spec {path} must be a mapping at the top level")
    return data


def _utf8(data: bytes, where: str) -> str:
    """``data`` decoded as UTF-8, or :class:`ManifestError` naming ``where``, the line and the bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise ManifestError(
            f"{where}: line {line} is not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _read_table(path: Path) -> Any:
    """The manifest as a polars frame of strings (CSV, TSV) or typed columns (Parquet). A file that cannot be
    read raises :class:`ManifestError` naming it (and the line, for bytes that are not UTF-8)."""
    import gzip

    import polars as pl

    suffix = path.suffix.lower()
    text = suffix in (".csv", ".tsv") or path.name.lower().endswith(".csv.gz")
    if not text and suffix not in (".parquet", ".pq"):
        raise ManifestError(f"manifest {path}: expected .csv, .csv.gz, .tsv or .parquet")
    try:
        if not text:
            return pl.read_parquet(path)
        return pl.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
    except (pl.exceptions.PolarsError, OSError) as e:
        if text:  # name the first line that is not UTF-8, the usual cause (a file saved as Latin-1)
            raw = path.read_bytes()
            _utf8(gzip.decompress(raw) if path.name.lower().endswith(".gz") else raw, f"manifest {path}")
        raise ManifestError(f"manifest {path} cannot be read: {str(e).splitlines()[0] if str(e) else e!r}") from e


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _open_bound(v: float | None) -> float | None:
    """A range bound of the spec: ``None`` for an open side (``inf``, ``-inf`` or null)."""
    return None if v is None or math.isinf(v) else float(v)


def _as_text(v: Any) -> str:
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v).strip()


class ManifestAdapter:
    """Rows from a manifest file; modalities, tasks, references and splits from the spec."""

    version: str

    def __init__(self, manifest: str | Path, spec: str | Path | dict, root: str | Path | None = None) -> None:
        self.manifest = Path(manifest).resolve()
        if not self.manifest.is_file():
            raise ManifestError(f"manifest {self.manifest} does not exist")
        self.spec = load_spec(spec)
        self._check_spec_keys()
        self.name = str(self.spec.get("name", "manifest"))
        self.version = str(self.spec.get("version", "1"))
        self.license = str(self.spec.get("license", ""))
        base = self.manifest.parent
        r = root if root is not None else self.spec.get("root", ".")
        self.root = (base / Path(r)).resolve() if not Path(r).is_absolute() else Path(r)
        self.df = _read_table(self.manifest)
        if self.df.height == 0:
            raise ManifestError(f"manifest {self.manifest} has no rows")
        self._cols = {c: self.df[c].to_list() for c in self.df.columns}
        self._stay, self._subject = self._keys()
        self._mods = self._build_modalities()
        self._cohort: Cohort | None = None

    # --------------------------------------------------------------------------------------- spec checks
    def _col(self, name: Any, where: str) -> list[Any]:
        if not isinstance(name, str) or name not in self._cols:
            raise ManifestError(
                f"spec {where}: column {name!r} is not in the manifest (columns: {', '.join(self._cols)})"
            )
        return self._cols[name]

    def _check_spec_keys(self) -> None:
        known = {
            "name",
            "version",
            "license",
            "stay_id",
            "subject_id",
            "root",
            "modalities",
            "tasks",
            "references",
            "splits",
            "ranges",
        }
        extra = set(self.spec) - known
        if extra:
            raise ManifestError(f"spec: unknown keys {sorted(extra)}; known keys are {sorted(known)}")
        mods = self.spec.get("modalities")
        if not isinstance(mods, dict) or not mods:
            raise ManifestError("spec: [modalities] must name at least one modality")
        for m, ms in mods.items():
            if not isinstance(ms, dict):
                raise ManifestError(f"spec modalities.{m}: must be a table")
            if ms.get("input") not in INPUTS:
                raise ManifestError(f"spec modalities.{m}: input must be one of {INPUTS}, got {ms.get('input')!r}")
            allowed = {"input", "column", "columns", "file", "shape", "feature_names", "ranges"}
            if set(ms) - allowed:
                raise ManifestError(f"spec modalities.{m}: unknown keys {sorted(set(ms) - allowed)}")
            if ("column" in ms) == ("columns" in ms):
                raise ManifestError(f"spec modalities.{m}: give exactly one of column or columns")
            if "columns" in ms and ms["input"] not in ("tabular", "vector"):
                raise ManifestError(f"spec modalities.{m}: inline columns are only for tabular or vector inputs")
            if "ranges" in ms and (ms["input"] not in ARRAY_INPUTS or not isinstance(ms["ranges"], dict)):
                raise ManifestError(f"spec modalities.{m}: ranges must be a table, for {', '.join(ARRAY_INPUTS)}")
        if not isinstance(self.spec.get("ranges", {}), dict):
            raise ManifestError("spec: [ranges] must be a table of feature = [low, high]")
        for t, ts in (self.spec.get("tasks") or {}).items():
            if not isinstance(ts, dict) or ts.get("kind") not in ("binary", "multilabel", "multiclass"):
                raise ManifestError(f"spec tasks.{t}: kind must be binary, multilabel or multiclass")
            unknown = set(ts) - {"kind", "column", "columns", "classes", "positive", "sep"}
            if unknown:
                raise ManifestError(f"spec tasks.{t}: unknown keys {sorted(unknown)}")

    def _where(self, i: int) -> str:
        stay = self._cols.get(self.spec.get("stay_id", "stay_id"), [None] * (i + 1))[i]
        return f"manifest row {i + 2} (stay_id {stay})"  # +2: one-based, after the header line

    def _keys(self) -> tuple[np.ndarray, np.ndarray]:
        sc = self.spec.get("stay_id", "stay_id")
        stay_raw = self._col(sc, "stay_id")
        subj_raw = self._col(self.spec.get("subject_id", "subject_id"), "subject_id")
        stay = np.empty(len(stay_raw), dtype=np.int64)
        seen: dict[int, int] = {}
        for i, v in enumerate(stay_raw):
            try:
                f = float(v) if not isinstance(v, (int, np.integer)) else v
                if _blank(v) or (isinstance(f, float) and not f.is_integer()):
                    raise ValueError
                stay[i] = int(f)
            except (TypeError, ValueError):
                raise ManifestError(f"{self._where(i)}: stay_id {v!r} is not an integer") from None
            if stay[i] in seen:
                raise ManifestError(
                    f"{self._where(i)}: duplicate stay_id {stay[i]} (also manifest row {seen[stay[i]] + 2})"
                )
            seen[int(stay[i])] = i
        subj = []
        for i, v in enumerate(subj_raw):
            if _blank(v):
                raise ManifestError(f"{self._where(i)}: empty subject_id")
            subj.append(_as_text(v))
        return stay, np.asarray(subj, dtype=str)

    # ------------------------------------------------------------------------------------------- protocol
    def options(self) -> dict:
        return {"manifest": str(self.manifest), "root": str(self.root), "spec": self.spec}

    def cohort(self) -> Cohort:
        if self._cohort is None:
            self._cohort = self._build_cohort()
        return self._cohort

    def modalities(self) -> list[RawModality]:
        return list(self._mods.values())

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        if modality not in self._mods:
            raise KeyError(f"no modality {modality!r} in the manifest spec ({list(self._mods)})")
        ms = self.spec["modalities"][modality]
        raw = self._mods[modality]
        if "columns" in ms:
            return [self._inline(modality, ms["columns"], int(i)) for i in rows]
        col = self._cols[ms["column"]]
        out: list[Item | Skip | None] = []
        for i in rows:
            v = col[int(i)]
            if _blank(v) and not (ms["input"] == "text" and isinstance(v, str) and not ms.get("file")):
                out.append(None)
            elif ms["input"] == "text":
                out.append(self._text(v, bool(ms.get("file"))))
            elif ms["input"] in ("image", "volume"):
                p = self._path(v)
                out.append(Item(str(p)) if p.exists() else Skip("file not found"))
            else:
                out.append(self._array_file(raw, self._path(v)))
        return out

    # -------------------------------------------------------------------------------------------- inputs
    def _path(self, v: Any) -> Path:
        p = Path(str(v).strip()).expanduser()
        return p if p.is_absolute() else self.root / p

    def _text(self, v: Any, from_file: bool) -> Item | Skip:
        if from_file:
            p = self._path(v)
            if not p.is_file():
                return Skip("file not found")
            try:
                v = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                return Skip("unreadable text file")
        if not isinstance(v, str):
            v = str(v)
        if not v.strip():
            return Skip("empty report")
        return Item(v)

    def _inline(self, modality: str, columns: list[str], i: int) -> Item | Skip | None:
        vals = [self._cols[c][i] for c in columns]
        if all(_blank(v) for v in vals):
            return None
        out = np.full(len(vals), np.nan, dtype=np.float64)  # float64: 1e39 is counted as too large, not as inf
        for k, v in enumerate(vals):
            if _blank(v):
                continue
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                return Skip(f"non-numeric value in column {columns[k]}")
        if self._mods[modality].kind == "vector" and not np.isfinite(out).all():
            return Skip("empty or non-finite value in a vector input")
        return Item(out)

    def _load_array(self, p: Path) -> tuple[np.ndarray, list[str] | None]:
        """.npy or .csv (with a header) -> float64 array and the csv's column names."""
        name = p.name.lower()
        if name.endswith(".npy"):
            return np.asarray(np.load(p, allow_pickle=False), dtype=np.float64), None
        if name.endswith((".csv", ".csv.gz")):
            import polars as pl

            t = pl.read_csv(p, infer_schema=False)
            cols = list(t.columns)
            arr = np.array(
                [[np.nan if _blank(v) else float(v) for v in row] for row in t.iter_rows()], dtype=np.float64
            ).reshape(t.height, len(cols))
            return arr, cols
        raise ValueError("unknown array file type")

    def _array_file(self, raw: RawModality, p: Path) -> Item | Skip:
        if not p.is_file():
            return Skip("file not found")
        try:
            arr, cols = self._load_array(p)
        except Exception:  # numpy and polars raise many types for damaged files
            return Skip("unreadable array file")
        return self._fit(raw, arr, cols)

    @staticmethod
    def _fit(raw: RawModality, arr: np.ndarray, cols: list[str] | None) -> Item | Skip:
        """Bring an array to the modality's shape: time series pad (NaN) or keep the first T steps."""
        shape = tuple(raw.shape or ())
        if cols is not None and raw.feature_names is not None and cols != raw.feature_names:
            return Skip("csv columns differ from the modality's feature names")
        if raw.kind == "timeseries":
            if arr.ndim != 2 or arr.shape[1] != shape[1]:
                return Skip(f"time series has shape {arr.shape}, expected [T, {shape[1]}]")
            if arr.shape[0] >= shape[0]:
                return Item(arr[: shape[0]])
            pad = np.full((shape[0] - arr.shape[0], shape[1]), np.nan, dtype=np.float64)
            return Item(np.concatenate([arr, pad], 0))
        if raw.kind == "tabular" and arr.ndim == 2 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.shape != shape:
            return Skip(f"array has shape {arr.shape}, expected {shape}")
        return Item(arr)

    # ---------------------------------------------------------------------------------------- modalities
    def _build_modalities(self) -> dict[str, RawModality]:
        out: dict[str, RawModality] = {}
        for m, ms in self.spec["modalities"].items():
            inp = ms["input"]
            if "columns" in ms:
                cols = list(ms["columns"])
                for c in cols:
                    self._col(c, f"modalities.{m}")
                out[m] = RawModality(m, "array", shape=(len(cols),), kind=inp, feature_names=cols)
                out[m].ranges = self._ranges(m, ms, cols)
                continue
            self._col(ms["column"], f"modalities.{m}")
            if inp in ("image", "volume", "text"):
                out[m] = RawModality(m, inp)
                continue
            shape, names = ms.get("shape"), ms.get("feature_names")
            if shape is None or (names is None and ms["column"]):
                got_shape, got_names = self._infer_array(m, ms["column"])
                shape = shape or got_shape
                names = names or got_names
            shape = tuple(int(s) for s in shape)
            want_nd = {"timeseries": 2, "tabular": 1, "vector": 1}[inp]
            if len(shape) != want_nd:
                raise ManifestError(f"spec modalities.{m}: {inp} needs a {want_nd}-D shape, got {list(shape)}")
            if names is not None and len(names) != shape[-1]:
                raise ManifestError(f"spec modalities.{m}: {len(names)} feature names for {shape[-1]} features")
            pre = {"source": "array files", "time_steps": "first T, NaN padded"} if inp == "timeseries" else {}
            out[m] = RawModality(m, "array", shape=shape, kind=inp, feature_names=names, preprocessing=pre)
            out[m].ranges = self._ranges(m, ms, names)
        used = {f for r in out.values() if r.input == "array" for f in r.feature_names or []}
        unknown = sorted(set(self.spec.get("ranges") or {}) - used)
        if unknown:
            raise ManifestError(f"spec [ranges]: no tabular, time-series or vector modality has features {unknown}")
        return out

    def _ranges(
        self, m: str, ms: dict[str, Any], names: list[str] | None
    ) -> dict[str, tuple[float | None, float | None]] | None:
        """The plausible ranges of modality ``m``: the spec's ``[ranges]`` for its features, then its own."""
        shared = {k: v for k, v in (self.spec.get("ranges") or {}).items() if names is not None and k in names}
        ranges = {**shared, **(ms.get("ranges") or {})}
        if not ranges:
            return None
        try:
            check_ranges(ranges, names, f"spec modalities.{m}")
        except ValueError as e:
            raise ManifestError(str(e)) from None
        return {k: (_open_bound(lo), _open_bound(hi)) for k, (lo, hi) in ranges.items()}

    def _infer_array(self, m: str, column: str) -> tuple[tuple[int, ...] | None, list[str] | None]:
        """Shape and column names from the first readable file of the column."""
        for v in self._cols[column]:
            if _blank(v):
                continue
            p = self._path(v)
            if not p.is_file():
                continue
            try:
                arr, cols = self._load_array(p)
            except Exception:  # unreadable here is skipped later; look at the next file
                continue
            if self.spec["modalities"][m]["input"] == "tabular" and arr.ndim == 2 and arr.shape[0] == 1:
                arr = arr[0]
            return tuple(arr.shape), cols
        if self.spec["modalities"][m].get("shape") is None:
            raise ManifestError(
                f"spec modalities.{m}: no readable file in column {column!r} to infer the shape from; give shape"
            )
        return None, None

    # -------------------------------------------------------------------------------------------- cohort
    def _build_cohort(self) -> Cohort:
        n = self.df.height
        tasks, labels = [], {}
        for t, ts in (self.spec.get("tasks") or {}).items():
            task, y, mask = self._labels(t, ts, n)
            tasks.append(task)
            labels[t] = (y, mask)
        refs = {}
        for r, col in (self.spec.get("references") or {}).items():
            vals = self._col(col, f"references.{r}")
            v = np.zeros(n, dtype=np.float32)
            mk = np.zeros(n, dtype=bool)
            for i, x in enumerate(vals):
                if _blank(x):
                    continue
                try:
                    v[i] = float(x)
                except (TypeError, ValueError):
                    raise ManifestError(f"{self._where(i)}: reference {r!r} value {x!r} is not a number") from None
                mk[i] = np.isfinite(v[i])
            refs[r] = (v, mk)
        splits = {}
        for s, col in (self.spec.get("splits") or {}).items():
            splits[s] = np.asarray(["" if _blank(x) else _as_text(x) for x in self._col(col, f"splits.{s}")])
        return Cohort(
            stay_id=self._stay,
            subject_id=self._subject,
            tasks=tasks,
            labels=labels,
            references=refs,
            splits=splits,
            extra={"manifest_rows": n},
        )

    def _binary(self, v: Any, i: int, what: str) -> float | None:
        if _blank(v):
            return None
        s = _as_text(v).lower() if not isinstance(v, bool) else str(v).lower()
        if s in _TRUE:
            return 1.0
        if s in _FALSE:
            return 0.0
        raise ManifestError(f"{self._where(i)}: {what} value {v!r} is not 0/1 (true/false, yes/no)")

    def _multiclass(self, t: str, ts: dict, n: int) -> tuple[TaskSpec, np.ndarray, np.ndarray]:
        """A multiclass task: y int64 [N] class index, mask bool [N]."""
        col = self._col(ts.get("column"), f"tasks.{t}")
        classes = [str(c) for c in ts.get("classes") or []]
        if len(classes) < 2:
            raise ManifestError(f"spec tasks.{t}: a multiclass task needs classes = [at least two]")
        index = {c: k for k, c in enumerate(classes)}
        y = np.zeros(n, dtype=np.int64)
        mask = np.zeros(n, dtype=bool)
        for i, v in enumerate(col):
            if _blank(v):
                continue
            s = _as_text(v)
            if s not in index:
                raise ManifestError(f"{self._where(i)}: label {t!r} value {s!r} is not one of {classes}")
            y[i], mask[i] = index[s], True
        return TaskSpec(t, "multiclass", classes), y, mask

    def _labels(self, t: str, ts: dict, n: int) -> tuple[TaskSpec, np.ndarray, np.ndarray]:
        kind = ts["kind"]
        mask = np.zeros(n, dtype=bool)
        if kind == "binary":
            col = self._col(ts.get("column"), f"tasks.{t}")
            classes = [str(ts.get("positive", t))]
            y = np.zeros((n, 1), dtype=np.float32)
            for i, v in enumerate(col):
                b = self._binary(v, i, f"label {t!r}")
                if b is not None:
                    y[i, 0], mask[i] = b, True
            return TaskSpec(t, kind, classes), y, mask
        if kind == "multiclass":
            return self._multiclass(t, ts, n)
        # multilabel
        if "columns" in ts:
            cols = list(ts["columns"])
            classes = [str(c) for c in ts.get("classes", cols)]
            if len(classes) != len(cols):
                raise ManifestError(f"spec tasks.{t}: {len(classes)} classes for {len(cols)} columns")
            data = [self._col(c, f"tasks.{t}") for c in cols]
            y = np.zeros((n, len(cols)), dtype=np.float32)
            for i in range(n):
                vals = [self._binary(d[i], i, f"label {t!r} column {c!r}") for d, c in zip(data, cols, strict=True)]
                if all(v is None for v in vals):
                    continue
                if any(v is None for v in vals):
                    raise ManifestError(f"{self._where(i)}: label {t!r} is empty in some of its columns only")
                y[i], mask[i] = vals, True
            return TaskSpec(t, kind, classes), y, mask
        col = self._col(ts.get("column"), f"tasks.{t}")
        classes = [str(c) for c in ts.get("classes") or []]
        if not classes:
            raise ManifestError(f"spec tasks.{t}: a multilabel task needs columns, or column with classes")
        sep = str(ts.get("sep", "|"))
        index = {c: k for k, c in enumerate(classes)}
        y = np.zeros((n, len(classes)), dtype=np.float32)
        for i, v in enumerate(col):
            if v is None:
                continue
            for tok in (x.strip() for x in str(v).split(sep)):
                if not tok:
                    continue
                if tok not in index:
                    raise ManifestError(f"{self._where(i)}: label {t!r} value {tok!r} is not one of {classes}")
                y[i, index[tok]] = 1.0
            mask[i] = True
        return TaskSpec(t, kind, classes), y, mask


@dataclass
class ManifestOptions:
    """Options of ``--dataset manifest``."""

    manifest: Path | None = option(None, help="CSV or Parquet file, one row per stay.", required=True)
    spec: Path | dict[str, Any] | None = option(None, help="TOML or YAML column spec.", required=True)
    root: Path | None = option(None, help="Base folder of relative paths (default: the spec's root).")


@register_dataset("manifest", options=ManifestOptions)  # its description: registry.DECLARED
def build_manifest(opts: ManifestOptions) -> ManifestAdapter:
    """``omnifuse extract --dataset manifest --manifest FILE --spec SPEC``."""
    assert opts.manifest is not None and opts.spec is not None  # required: checked by the registry
    return ManifestAdapter(opts.manifest, opts.spec, opts.root)

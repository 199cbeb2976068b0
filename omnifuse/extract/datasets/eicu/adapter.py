"""The eICU adapters ``eicu`` (any eICU-CRD 2.0 folder) and ``eicu-demo`` (the bundled demo 2.0.1).

Everything is computed once, on the first call that needs it, and kept in the adapter: ``inputs`` for a
block of rows only gathers precomputed results.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from omnifuse.extract.datasets.base import Cohort, Item, RawModality, Skip
from omnifuse.extract.datasets.eicu import variables
from omnifuse.extract.datasets.eicu.admission import build_admission
from omnifuse.extract.datasets.eicu.apache import build_apache
from omnifuse.extract.datasets.eicu.care_limitation import build_care_limitation
from omnifuse.extract.datasets.eicu.cohort import build_cohort, read_patients, stay_rows
from omnifuse.extract.datasets.eicu.exam_values import build_exam_values
from omnifuse.extract.datasets.eicu.readers import DEMO_DIRNAME, TABLE_NAMES, EicuDataError, demo_root, find_tables
from omnifuse.extract.datasets.eicu.text import TextModality, text_modalities
from omnifuse.extract.datasets.eicu.treatments import build_treatments
from omnifuse.extract.datasets.eicu.vitals import SparseSeries, build_vitals, vital_sources, vitals_modality
from omnifuse.extract.datasets.registry import register_dataset
from omnifuse.options import option

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    cohort: Cohort
    modalities: list[RawModality] = field(default_factory=list)
    vitals: SparseSeries | None = None
    tabular: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # float32 [N, F], bool [N]
    texts: dict[str, TextModality] = field(default_factory=dict)

    def coverage(self, name: str) -> int:
        """Stays with modality ``name`` present."""
        if name == "vitals":
            assert self.vitals is not None
            return int(self.vitals.present().sum())
        if name in self.tabular:
            return int(self.tabular[name][1].sum())
        return len(self.texts[name].texts)


class EicuAdapter:
    """eICU-CRD 2.0 from a directory of its CSV tables (``.csv`` or ``.csv.gz``); see ``docs/eicu.md``.

    ``pre_admission_text``: also take history, diagnosis and exam entries recorded before unit admission
    (negative offsets), in the text modalities and in their structured twins (the admission diagnosis of
    ``admission``, ``exam_values``). Off by default: the window is 0 to 1,440 minutes for every modality.
    ``care_limitation``: add the ``care_limitation`` modality (code status charted in the window), a
    clinician's decision that predicts death. Off by default.
    """

    name = "eicu"
    version = "2.0"
    license = (
        "eICU-CRD: PhysioNet Credentialed Health Data License and Data Use Agreement; everything derived from "
        "it, embeddings included, stays under that agreement"
    )

    def __init__(self, root: str | Path, *, pre_admission_text: bool = False, care_limitation: bool = False) -> None:
        if root is None:
            raise EicuDataError("--dataset eicu needs --root DIR (the eICU-CRD folder); the bundled demo is eicu-demo")
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise EicuDataError(f"eICU root {self.root} is not a directory")
        self.tables = find_tables(self.root)
        if "patient" not in self.tables:
            raise EicuDataError(f"no patient.csv.gz or patient.csv in {self.root}: not an eICU-CRD folder")
        self.pre_admission_text = bool(pre_admission_text)
        self.care_limitation = bool(care_limitation)
        self._prep: _Prepared | None = None
        absent = [t for t in TABLE_NAMES if t not in self.tables]
        if absent:
            log.info("eICU at %s: tables not present (their inputs are left out): %s", self.root, ", ".join(absent))

    # -- protocol
    def options(self) -> dict:
        return {
            "root": str(self.root),
            "window_min": [0, variables.WINDOW_MIN],
            "bin_min": variables.BIN_MIN,
            "pre_admission_text": self.pre_admission_text,
            "care_limitation": self.care_limitation,
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
        elif modality in prep.tabular:
            x, present = prep.tabular[modality]
            for r in rows:
                out.append(Item(x[r].copy()) if present[r] else None)
        else:
            tm = prep.texts[modality]
            for r in rows:
                t = tm.texts.get(int(r))
                out.append(None if t is None else Item(t, provenance=tm.provenance.get(int(r))))
        return out

    # -- preparation
    def _prepared(self) -> _Prepared:
        if self._prep is None:
            self._prep = self._prepare()
        return self._prep

    def _prepare(self) -> _Prepared:
        t = self.tables
        pat = read_patients(t["patient"])
        stay_index = stay_rows(pat)
        prep = _Prepared(cohort=build_cohort(t, pat, stay_index))
        extra = prep.cohort.extra
        sources, feats = vital_sources(t)
        if feats:
            prep.vitals, extra["vitals_rows"] = build_vitals(sources, feats, stay_index)
            prep.modalities.append(vitals_modality(sources, feats))
        else:
            log.warning("eICU at %s: no time-series table found; vitals left out", self.root)
        if "apacheApsVar" in t or "apachePredVar" in t:
            x, present, raw = build_apache(t, pat, stay_index)
            self._add_tabular(prep, raw, x, present)
        else:
            log.warning("eICU at %s: no apacheApsVar / apachePredVar; apache left out", self.root)
        for tm in text_modalities(t, self.pre_admission_text, stay_index, extra):
            prep.texts[tm.raw.name] = tm
            prep.modalities.append(tm.raw)
        # the tabular modalities added after the first five (their order is kept for existing caches)
        x, present, raw = build_admission(t, pat, stay_index, self.pre_admission_text)
        self._add_tabular(prep, raw, x, present)
        if "physicalExam" in t:
            x, present, raw, extra["exam_values_rows"] = build_exam_values(
                t["physicalExam"], stay_index, self.pre_admission_text
            )
            self._add_tabular(prep, raw, x, present)
        if "treatment" in t or "infusionDrug" in t:
            x, present, raw = build_treatments(t, stay_index)
            self._add_tabular(prep, raw, x, present)
        else:
            log.warning("eICU at %s: no treatment / infusionDrug; treatments left out", self.root)
        if self.care_limitation:
            if "carePlanGeneral" not in t:
                raise EicuDataError(f"care_limitation asks for carePlanGeneral, which is not in {self.root}")
            x, present, raw = build_care_limitation(t["carePlanGeneral"], stay_index)
            self._add_tabular(prep, raw, x, present)
        extra["coverage"] = {m.name: prep.coverage(m.name) for m in prep.modalities}
        log.info("eICU: %d stays, %d patients; coverage %s", len(prep.cohort), extra["patients"], extra["coverage"])
        return prep

    @staticmethod
    def _add_tabular(prep: _Prepared, raw: RawModality, x: np.ndarray, present: np.ndarray) -> None:
        prep.tabular[raw.name] = (x, present)
        prep.modalities.append(raw)


class EicuDemoAdapter(EicuAdapter):
    """The bundled eICU-CRD demo 2.0.1 (2,520 stays; ODbL 1.0; lacks lab, vitalPeriodic, nurseCharting)."""

    name = "eicu-demo"
    version = "2.0.1"
    license = (
        "eICU-CRD Demo 2.0.1: Open Database License (ODbL) 1.0; a database derived from it must stay under the "
        "ODbL and attribute the source (see omnifuse/data/eicu-demo-2.0.1/SOURCE.md and LICENSE.txt)"
    )

    def __init__(
        self, root: str | Path | None = None, *, pre_admission_text: bool = False, care_limitation: bool = False
    ) -> None:
        if root is not None:
            raise EicuDataError("eicu-demo reads the bundled copy; for another folder use --dataset eicu --root DIR")
        super().__init__(demo_root(), pre_admission_text=pre_admission_text, care_limitation=care_limitation)

    def options(self) -> dict:
        opts = super().options()
        opts["root"] = f"<bundled>/{DEMO_DIRNAME}"
        return opts


@dataclass
class EicuDemoOptions:
    """Options of ``--dataset eicu-demo``."""

    pre_admission_text: bool = option(
        False,
        help="Also take history, diagnosis and exam entries recorded before unit admission (the texts and the "
        "structured admission diagnosis and exam values).",
    )
    care_limitation: bool = option(
        False,
        help="Add the care_limitation modality: code status (do not resuscitate, comfort measures only, other "
        "limits of care) charted in the first 24 h. It encodes a clinician's decision that predicts death: "
        "models using it partly predict what clinicians decided, so it is off by default.",
    )


@dataclass
class EicuOptions(EicuDemoOptions):
    """Options of ``--dataset eicu``: those of the demo and the folder."""

    root: Path | None = option(None, help="eICU-CRD 2.0 folder (its CSV tables, .csv or .csv.gz).", required=True)


# eICU's texts are short structured strings: the bundled offline MiniLM, mean-pooled, encodes them (no images).
# The descriptions of eicu-demo and eicu are in registry.DECLARED (listed without importing this module).
@register_dataset("eicu-demo", options=EicuDemoOptions, text_encoder="minilm", text_pooling="mean")
def build_eicu_demo(opts: EicuDemoOptions) -> EicuDemoAdapter:
    """``omnifuse extract --dataset eicu-demo``: the bundled copy."""
    return EicuDemoAdapter(pre_admission_text=opts.pre_admission_text, care_limitation=opts.care_limitation)


@register_dataset("eicu", options=EicuOptions, text_encoder="minilm", text_pooling="mean")
def build_eicu(opts: EicuOptions) -> EicuAdapter:
    """``omnifuse extract --dataset eicu --root DIR``: an eICU-CRD 2.0 folder."""
    assert opts.root is not None  # required: checked by the registry
    return EicuAdapter(opts.root, pre_admission_text=opts.pre_admission_text, care_limitation=opts.care_limitation)

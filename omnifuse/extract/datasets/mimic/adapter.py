"""The MIMIC adapter: ICU stays with the 17-variable EHR, MIMIC-CXR image and report; mortality, phenotyping.

See docs/mimic.md for every rule and each place where it follows or departs from mimic3-benchmarks / MedFuse.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from omnifuse.cache.schema import TaskSpec
from omnifuse.extract.datasets.base import Cohort, Item, RawModality, Skip
from omnifuse.extract.datasets.mimic import cohort as mimic_cohort
from omnifuse.extract.datasets.mimic import cxr
from omnifuse.extract.datasets.mimic.ccs import PHENOTYPE_MAPS, PHENOTYPES
from omnifuse.extract.datasets.mimic.clean import EHR_MODES, EhrMode
from omnifuse.extract.datasets.mimic.discretize import discretize_parquet, discretize_stays, n_bins, stay_bins
from omnifuse.extract.datasets.mimic.events import MORTALITY_HOURS, collect_events
from omnifuse.extract.datasets.mimic.readers import MimicLayout
from omnifuse.extract.datasets.mimic.variables import (
    CATEGORIES,
    CONTINUOUS,
    N_FEATURES,
    RANGES,
    continuous_indices,
    feature_names,
)
from omnifuse.extract.datasets.registry import register_dataset
from omnifuse.options import option

log = logging.getLogger(__name__)

DATA_USE = (
    "Derived from MIMIC (PhysioNet credentialed access). Every array in this cache, embeddings included, stays "
    "under the PhysioNet Credentialed Health Data Use Agreement of its source: do not share it with anyone "
    "who has not signed that agreement."
)
Task = Literal["both", "mortality", "phenotyping"]
PHENOTYPE_HOURS = 336.0
"""Default cap of the whole-stay EHR (``ehr_stay``): 14 days, 168 bins of 2 h (docs/mimic.md, "Whole stay")."""


class MimicAdapter:
    """MIMIC-III / MIMIC-IV ICU stays as rows (one row per stay).

    ``root``: MIMIC-III (UPPERCASE CSVs) or MIMIC-IV (hosp/ or core/, icu/). ``cxr_root``: MIMIC-CXR-JPG
    (MIMIC-IV only). ``reports_root``: MIMIC-CXR reports (folder or zip; default ``cxr_root``).
    ``task``: "both" (all stays; mortality masked for stays < 48 h; ``cxr``/``report`` from the first
    min(48 h, LOS), mortality's default, and, with ``ehr_stay``, ``cxr_stay``/``report_stay`` from the whole
    stay, inputs of phenotyping only), "mortality" (stays >= 48 h only) or "phenotyping" (all stays; CXR window
    = the whole stay). ``timestep`` hours per bin; ``hours`` the EHR
    window from ICU admission (the ``ehr`` modality); ``phenotype_hours`` the cap of the whole-stay EHR of the
    phenotyping task (``ehr_stay``: each stay's first min(LOS, cap) hours, variable length; 0: none, and
    phenotyping reads the ``hours`` window); ``include_pa`` lets PA views be chosen as well as AP; ``ehr_mode``
    "benchmark" reproduces the benchmark's item map, value cleaning and tie-break (MedFuse's port on MIMIC-IV),
    "clean" is omnifuse's cleaning with plausibility ranges; ``phenotype_map`` maps MIMIC-IV's ICD-10 codes as
    MedFuse ("medfuse") or through the CMS GEM ("gem"); ``workdir`` holds the intermediate parquet.
    """

    name = "mimic"
    version = "3"  # 2: ehr_mode and phenotype_map (benchmark cleaning, MedFuse labels); 3: ehr_stay (whole stay)
    # and, under task "both", cxr_stay / report_stay (phenotyping's whole-stay image and report)
    license = DATA_USE

    def __init__(
        self,
        root: str | Path,
        cxr_root: str | Path | None = None,
        reports_root: str | Path | None = None,
        *,
        task: Task = "both",
        timestep: float = 2.0,
        hours: float = 48.0,
        phenotype_hours: float = PHENOTYPE_HOURS,
        include_pa: bool = False,
        ehr_mode: EhrMode = "benchmark",
        phenotype_map: str = "medfuse",
        workdir: str | Path | None = None,
        batch_rows: int = 2_000_000,
    ) -> None:
        self.layout = MimicLayout.detect(root)
        if task not in ("both", "mortality", "phenotyping"):
            raise ValueError(f"task must be 'both', 'mortality' or 'phenotyping', got {task!r}")
        if ehr_mode not in EHR_MODES:
            raise ValueError(f"ehr_mode must be one of {EHR_MODES}, got {ehr_mode!r}")
        if phenotype_map not in PHENOTYPE_MAPS:
            raise ValueError(f"phenotype_map must be one of {PHENOTYPE_MAPS}, got {phenotype_map!r}")
        if timestep <= 0 or hours <= 0 or hours < timestep:
            raise ValueError(f"need 0 < timestep <= hours, got timestep={timestep}, hours={hours}")
        if phenotype_hours != 0 and not phenotype_hours >= timestep:
            raise ValueError(
                f"phenotype_hours must be 0 (no whole-stay EHR) or at least timestep={timestep}, got {phenotype_hours}"
            )
        if self.layout.version == "mimic-iii" and (cxr_root is not None or reports_root is not None):
            raise ValueError(
                "MIMIC-CXR links to MIMIC-IV subject_ids only; a MIMIC-III root cannot be matched to chest X-rays "
                "or reports. Drop the CXR/report sources to extract the EHR of MIMIC-III, or use a MIMIC-IV root."
            )
        self.cxr_root = Path(cxr_root) if cxr_root is not None else None
        rr = reports_root if reports_root is not None else cxr_root
        self.reports_root = Path(rr) if rr is not None else None
        self.task: Task = task
        self.timestep = float(timestep)
        self.hours = float(hours)
        self.phenotype_hours = float(phenotype_hours)
        # the whole-stay EHR exists where the phenotyping task does
        self.whole_stay = task != "mortality" and self.phenotype_hours > 0
        # under "both", phenotyping's own image and report (whole-stay window) beside mortality's 48 h ones
        self.stay_images = task == "both" and self.whole_stay
        self.include_pa = include_pa
        self.ehr_mode: EhrMode = ehr_mode
        self.phenotype_map = phenotype_map
        self.batch_rows = batch_rows
        self._tmp: tempfile.TemporaryDirectory | None = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="omnifuse-mimic-")
            workdir = self._tmp.name
        self.workdir = Path(workdir)
        self._cohort: Cohort | None = None
        self._stays: pl.DataFrame | None = None
        self._ehr: np.ndarray | None = None
        self._ehr_stay: tuple[np.ndarray, np.ndarray] | None = None  # (values [S, 76], offsets [N + 1])
        self._chosen: dict[int, tuple[int, int, str]] | None = None  # row -> (subject, study, dicom)
        self._chosen_stay: dict[int, tuple[int, int, str]] | None = None  # the same in the whole-stay window
        self._reports: cxr.ReportStore | None = None
        self._said: set[str] = set()

    # ------------------------------------------------------------------ protocol
    def options(self) -> dict:
        return {
            "root": str(self.layout.root),
            "source": self.layout.version,
            "cxr_root": str(self.cxr_root) if self.cxr_root else None,
            "reports_root": str(self.reports_root) if self.reports_root else None,
            "task": self.task,
            "timestep_h": self.timestep,
            "hours": self.hours,
            "phenotype_hours": self.phenotype_hours,
            "include_pa": self.include_pa,
            "ehr_mode": self.ehr_mode,
            "phenotype_map": self.phenotype_map,
        }

    def modalities(self) -> list[RawModality]:
        T = n_bins(self.hours, self.timestep)
        ehr_pre = {
            "continuous": continuous_indices(),
            "timestep_h": self.timestep,
            "hours": self.hours,
            "imputation": "previous, normal value before the first observation",
            "ehr_mode": self.ehr_mode,
            "layout": "mimic3-benchmarks discretiser: 59 value columns then 17 masks",
        }
        ehr = [
            RawModality(
                name="ehr",
                input="array",
                kind="timeseries",
                shape=(T, N_FEATURES),
                feature_names=feature_names(),
                dtype="float32",
                # beside the whole stay, the first `hours` are mortality's default EHR (phenotyping may name it)
                preprocessing={**ehr_pre, "default_for": ["mortality"]} if self.whole_stay else ehr_pre,
                ranges=ehr_ranges(self.ehr_mode),
            )
        ]
        if self.whole_stay:
            ehr.append(
                RawModality(
                    name="ehr_stay",
                    input="array",
                    kind="timeseries",
                    shape=(n_bins(self.phenotype_hours, self.timestep), N_FEATURES),
                    feature_names=feature_names(),
                    dtype="float32",
                    preprocessing={
                        **ehr_pre,
                        "hours": self.phenotype_hours,
                        "window": "the whole ICU stay up to phenotype_hours (runs past 48 h)",
                        "variable_length": True,
                        "input_for": ["phenotyping"],
                    },
                    ranges=ehr_ranges(self.ehr_mode),
                )
            )
        if not self.stay_images:
            return [*ehr, *self._image_modalities("cxr", "report", {})]
        # --task both with ehr_stay: mortality's image and report (its 48 h window) are its defaults, and
        # phenotyping's come from its own window (the whole stay), an input of phenotyping only, as ehr_stay
        return [
            *ehr,
            *self._image_modalities("cxr", "report", {"window": self._cxr_window(), "default_for": ["mortality"]}),
            *self._image_modalities(
                "cxr_stay", "report_stay", {"window": self._cxr_window(stay=True), "input_for": ["phenotyping"]}
            ),
        ]

    def _cxr_window(self, stay: bool = False) -> str:
        """The study-time window of the chosen image (``stay``: the whole-stay one of ``cxr_stay``)."""
        if stay:
            return "intime .. outtime (the whole ICU stay)"
        return {
            "both": "intime .. min(intime + hours, outtime)",
            "mortality": "intime .. intime + hours",
            "phenotyping": "intime .. outtime",
        }[self.task]

    def _image_modalities(self, image: str, report: str, keys: dict) -> list[RawModality]:
        """The chosen MIMIC-CXR image and its study's report as modalities ``image`` and ``report``, ``keys``
        (the window, the task keys ``default_for`` / ``input_for``) added to their preprocessing."""
        return [
            RawModality(
                name=image,
                input="image",
                available=self.cxr_root is not None,
                absent_reason="no MIMIC-CXR-JPG source given (--cxr-root)",
                preprocessing={
                    "views": ["AP", "PA"] if self.include_pa else ["AP"],
                    "choice": "latest study in the window",
                    **keys,
                },
            ),
            RawModality(
                name=report,
                input="text",
                provenance_codes=list(cxr.REPORT_PROVENANCE),
                available=self.cxr_root is not None and self.reports_root is not None,
                absent_reason="no MIMIC-CXR report source given (--reports-root, with --cxr-root)",
                preprocessing={"section": "FINDINGS, else IMPRESSION", "max_words": cxr.MAX_WORDS, **keys},
            ),
        ]

    def cohort(self) -> Cohort:
        if self._cohort is None:
            self._build()
        assert self._cohort is not None
        return self._cohort

    def inputs(self, modality: str, rows: np.ndarray) -> list[Item | Skip | None]:
        self.cohort()
        rows = np.asarray(rows, dtype=np.int64)
        if modality == "ehr":
            ehr = self.ehr_arrays()
            return [Item(ehr[r]) for r in rows]
        if modality == "ehr_stay" and self.whole_stay:
            values, offsets = self.ehr_stay_arrays()
            return [Item(values[offsets[r] : offsets[r + 1]]) for r in rows]
        if modality in ("cxr", "report") or (self.stay_images and modality in ("cxr_stay", "report_stay")):
            if self.cxr_root is None:
                self._say_once("no-cxr", "no MIMIC-CXR source given: cxr and report are missing for every stay")
                return [None] * len(rows)
            chosen = (self._chosen_stay if modality.endswith("_stay") else self._chosen) or {}
            out: list[Item | Skip | None] = []
            for r in rows.tolist():
                c = chosen.get(r)
                if c is None:
                    out.append(None)
                elif modality.startswith("cxr"):
                    p = cxr.image_path(self.cxr_root, *c)
                    out.append(Item(str(p)) if p.is_file() else Skip("image file missing"))
                else:
                    out.append(self._report(c[0], c[1]))
            return out
        raise KeyError(f"mimic adapter has no modality {modality!r}")

    # ------------------------------------------------------------------ building
    def _say_once(self, key: str, msg: str) -> None:
        if key not in self._said:
            self._said.add(key)
            log.warning(msg)

    def _report(self, subject: int, study: int) -> Item | Skip | None:
        if self.reports_root is None:
            return None
        if self._reports is None:
            try:
                self._reports = cxr.ReportStore(self.reports_root)
            except cxr.CxrLayoutError as e:
                self._say_once("no-reports", f"reports missing for every stay: {e}")
                self.reports_root = None
                return None
        text = self._reports.read(subject, study)
        if text is None:
            return Skip("report file missing")
        got = cxr.findings_text(text)
        if got is None:
            return Skip("report has neither FINDINGS nor IMPRESSION")
        return Item(got[0], provenance=got[1])

    def _build(self) -> None:
        stays, rules = mimic_cohort.base_stays(self.layout)
        ev_path = self.workdir / f"events_{self.layout.version}.parquet"
        ev = collect_events(  # events of the longest window asked for; each array cuts its own
            self.layout,
            stays,
            ev_path,
            hours=max(self.hours, self.phenotype_hours) if self.whole_stay else self.hours,
            mode=self.ehr_mode,
            batch_rows=self.batch_rows,
        )
        keep = ev["any_in_stay"]
        rules.append(
            {
                "rule": "no usable event of the 17 variables during the ICU stay",
                "excluded": int((~keep).sum()),
                "remaining": int(keep.sum()),
            }
        )
        los_ok = stays["los_h"].to_numpy() >= MORTALITY_HOURS - 1e-6
        mort_ok = los_ok & ev["any_in_48h"]
        if self.task == "mortality":
            rules.append(
                {
                    "rule": "mortality cohort: stay shorter than 48 h or no event in the first 48 h",
                    "excluded": int((keep & ~mort_ok).sum()),
                    "remaining": int((keep & mort_ok).sum()),
                }
            )
            keep = keep & mort_ok
        idx = np.flatnonzero(keep)
        self._old_rows = idx  # rows of the event parquet for each cohort row
        stays = stays[idx]
        self._stays = stays
        N = stays.height
        sid = stays["stay_id"].to_numpy().astype(np.int64)
        subj = stays["subject_id"].to_numpy()
        mort_y = stays["mortality"].to_numpy().astype(np.float32)[:, None]
        mort_mask = mort_ok[idx]
        pheno_y, pheno_stats = mimic_cohort.phenotype_labels(
            self.layout, stays["hadm_id"].to_numpy(), self.phenotype_map
        )
        split, split_stats = mimic_cohort.benchmark_split(self.layout.version, subj)
        splits = {"benchmark": split}
        extra: dict = {
            "source": self.layout.version,
            "cohort_rules": rules,
            "events_read": ev["rows_read"],
            "event_values": ev["counts"],
            "phenotype_codes": pheno_stats,
            "benchmark_split": split_stats,
            "data_use": DATA_USE,
            "stays": int(N),
            "subjects": int(len(np.unique(subj))),
            "mortality": {"labelled": int(mort_mask.sum()), "positive": int(mort_y[mort_mask].sum())},
            "phenotyping": {
                "labelled": int(N),
                "positives": {g: int(pheno_y[:, j].sum()) for j, g in enumerate(PHENOTYPES)},
            },
            "ehr_window": ("first min(hours, length of stay) hours of the stay; masks 0 after ICU discharge"),
        }
        if self.whole_stay:
            los = stays["los_h"].to_numpy()
            bins = stay_bins(los, self.phenotype_hours, self.timestep)
            extra["ehr_stay"] = {
                "window": "first min(length of stay, phenotype_hours) hours; no bin after ICU discharge",
                "phenotype_hours": self.phenotype_hours,
                "max_bins": n_bins(self.phenotype_hours, self.timestep),
                "stays_longer_than_cap": int((los > self.phenotype_hours).sum()),
                "bins_per_stay": {
                    "mean": round(float(bins.mean()), 2) if N else 0.0,
                    "median": float(np.median(bins)) if N else 0.0,
                    "max": int(bins.max()) if N else 0,
                },
            }
        if self.cxr_root is not None:
            self._match_cxr(stays, extra, splits)
        else:
            extra["cxr"] = "no MIMIC-CXR source given: cxr and report missing for every stay"
        references = {
            "los_hours": (stays["los_h"].to_numpy().astype(np.float32), np.ones(N, dtype=bool)),
            "age": (stays["age"].to_numpy().astype(np.float32), np.ones(N, dtype=bool)),
        }
        tasks = [TaskSpec("mortality", "binary", ["in_hospital_death"])]
        labels = {"mortality": (mort_y, mort_mask)}
        if self.task != "mortality":
            tasks.append(TaskSpec("phenotyping", "multilabel", list(PHENOTYPES)))
            labels["phenotyping"] = (pheno_y, np.ones(N, dtype=bool))
        self._cohort = Cohort(
            stay_id=sid,
            subject_id=subj.astype(str),
            tasks=tasks,
            labels=labels,
            references=references,
            splits=splits,
            extra=extra,
        )
        for r in rules:
            log.info("cohort rule %-70s excluded %6d remaining %6d", r["rule"], r["excluded"], r["remaining"])

    def _window_end(self, stay: bool = False) -> pl.Expr:
        """End of the CXR window: the task's (``--task both``: min(intime + hours, outtime), each stay's window
        the one of the task it is labelled for at 48 h); ``stay``: outtime, phenotyping's own (``cxr_stay``)."""
        by_hours = pl.col("intime") + pl.duration(microseconds=int(self.hours * 3.6e9))
        if self.task == "phenotyping" or stay:
            return pl.col("outtime")
        if self.task == "mortality":
            return by_hours
        return pl.min_horizontal(by_hours, pl.col("outtime"))

    def _match_cxr(self, stays: pl.DataFrame, extra: dict, splits: dict) -> None:
        assert self.cxr_root is not None
        meta = cxr.read_metadata(self.cxr_root)

        def choose(stay: bool) -> dict[int, tuple[int, int, str]]:
            st = stays.select(
                pl.arange(0, stays.height, dtype=pl.Int64).alias("row"),
                "subject_id",
                "intime",
                self._window_end(stay).alias("window_end"),
            )
            chosen = cxr.match_studies(meta, st, include_pa=self.include_pa)
            return {
                r: (s, t, d) for r, s, t, d in chosen.select("row", "subject_id", "study_id", "dicom_id").iter_rows()
            }

        self._chosen = choose(False)
        subj_with_cxr = int(stays.filter(pl.col("subject_id").is_in(meta["subject_id"].unique().implode())).height)
        extra["cxr"] = {
            "stays_with_chosen_image": len(self._chosen),
            "stays_whose_subject_has_any_cxr": subj_with_cxr,
            "views": ["AP", "PA"] if self.include_pa else ["AP"],
            "window": self._cxr_window(),
        }
        if self.stay_images:
            self._chosen_stay = choose(True)
            extra["cxr"]["cxr_stay"] = {
                "window": self._cxr_window(stay=True),
                "stays_with_chosen_image": len(self._chosen_stay),
                "stays_whose_image_differs_from_cxr": sum(
                    self._chosen.get(r) != c for r, c in self._chosen_stay.items()
                ),
            }
        sp = cxr.read_split(self.cxr_root)
        if sp is not None:
            j = stays.select("subject_id").with_row_index("i").join(sp, on="subject_id", how="left").sort("i")
            splits["mimic_cxr"] = j["split"].fill_null("none").to_numpy().astype(str)

    def stays(self) -> pl.DataFrame:
        """The cohort's stays, in row order: ids, times, los_h, age, mortality."""
        self.cohort()
        assert self._stays is not None
        return self._stays

    def ehr_arrays(self) -> np.ndarray:
        """float32 [N, T, 76] for every cohort row (computed once, then kept)."""
        self.cohort()
        if self._ehr is None:
            assert self._stays is not None
            self._ehr = discretize_parquet(  # one block of stays at a time (memory: a block, not the file)
                self.workdir / f"events_{self.layout.version}.parquet",
                self._old_rows,
                self.timestep,
                self.hours,
                end_hours=self._stays["los_h"].to_numpy(),
            )
        return self._ehr

    def ehr_stay_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The whole-stay EHR of every cohort row, ``(values float32 [S, 76], offsets int64 [N + 1])``: row ``i``
        holds ``values[offsets[i]:offsets[i + 1]]``, its first min(LOS, phenotype_hours) hours in
        ``stay_bins`` bins (computed once, then kept; ``ValueError`` without a whole-stay EHR)."""
        if not self.whole_stay:
            raise ValueError(f"no whole-stay EHR with task={self.task!r}, phenotype_hours={self.phenotype_hours}")
        self.cohort()
        if self._ehr_stay is None:
            assert self._stays is not None
            self._ehr_stay = discretize_stays(
                self.workdir / f"events_{self.layout.version}.parquet",
                self._old_rows,
                self.timestep,
                self.phenotype_hours,
                self._stays["los_h"].to_numpy(),
            )
        return self._ehr_stay


def ehr_ranges(ehr_mode: str) -> dict[str, tuple[float | None, float | None]]:
    """Plausible ranges of the 76 EHR columns, checked again by the pipeline: one-hot and mask columns [0, 1];
    in ``clean`` mode the continuous channels' valid bounds (the cleaning already removed or clipped every
    value to them, so nothing is masked unless a stage before went wrong); in ``benchmark`` mode none (the
    benchmark keeps every readable value: urine pH 5, a systolic pressure of 11647)."""
    out: dict[str, tuple[float | None, float | None]] = {}
    for v, cats in CATEGORIES.items():
        out.update({f"{v}->{c}": (0, 1) for c in cats})
    out.update({f"mask->{v}": (0, 1) for v in [*CATEGORIES, *CONTINUOUS]})
    if ehr_mode == "clean":
        out.update({v: (RANGES[v][1], RANGES[v][2]) for v in CONTINUOUS})
    return out


@dataclass
class MimicOptions:
    """Options of ``--dataset mimic`` (see ``MimicAdapter``)."""

    root: Path | None = option(None, help="MIMIC-III or MIMIC-IV folder.", required=True)
    cxr_root: Path | None = option(None, help="MIMIC-CXR-JPG folder (MIMIC-IV only).")
    reports_root: Path | None = option(None, help="MIMIC-CXR reports folder or zip (default --cxr-root).")
    task: str = option(
        "both",
        help="both (all stays), mortality (stays of 48 h or more) or phenotyping.",
        choices=("both", "mortality", "phenotyping"),
    )
    timestep: float = option(2.0, help="EHR bin width in hours.")
    hours: float = option(48.0, help="EHR window from ICU admission, in hours (the ehr modality).")
    phenotype_hours: float = option(
        PHENOTYPE_HOURS,
        help="Cap, in hours, of the phenotyping task's whole-stay EHR (ehr_stay: each stay's first min(LOS, cap) "
        "hours, variable length; the benchmark has no cap). 0: no ehr_stay, phenotyping reads the ehr window.",
    )
    include_pa: bool = option(False, help="Accept PA views besides AP.")
    ehr_mode: str = option(
        "benchmark",
        help="benchmark: the benchmark's EHR cleaning bit for bit (MedFuse's port on MIMIC-IV); "
        "clean: omnifuse's cleaning with plausibility ranges.",
        choices=EHR_MODES,
    )
    phenotype_map: str = option(
        "medfuse",
        help="ICD-10 codes to phenotypes: medfuse (MedFuse's lists) or gem (through the CMS GEM).",
        choices=PHENOTYPE_MAPS,
    )
    workdir: Path | None = option(None, help="Folder for the intermediate parquet (default: a temporary one).")
    batch_rows: int = option(2_000_000, help="Event rows read per batch (memory against speed).")


@register_dataset("mimic", options=MimicOptions)  # its description: registry.DECLARED
def build_mimic(opts: MimicOptions) -> MimicAdapter:
    """``omnifuse extract --dataset mimic --root DIR [--cxr-root DIR]``."""
    assert opts.root is not None  # required: checked by the registry
    return MimicAdapter(
        opts.root,
        opts.cxr_root,
        opts.reports_root,
        task=opts.task,  # type: ignore[arg-type]
        timestep=opts.timestep,
        hours=opts.hours,
        phenotype_hours=opts.phenotype_hours,
        include_pa=opts.include_pa,
        ehr_mode=opts.ehr_mode,  # type: ignore[arg-type]
        phenotype_map=opts.phenotype_map,
        workdir=opts.workdir,
        batch_rows=opts.batch_rows,
    )

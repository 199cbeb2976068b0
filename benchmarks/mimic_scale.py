"""MIMIC-IV at scale: K identifier-shifted copies of the MIMIC-IV demo, the time and peak memory of
``omnifuse extract --dataset mimic`` on each, and MIMIC-CXR linking against a 377,110-image metadata table.

    python benchmarks/mimic_scale.py generate --out DIR --k 1 10 50      # DIR/k1, DIR/k10, DIR/k50
    python benchmarks/mimic_scale.py run --data DIR --k 1 10 50          # one fresh process per K
    python benchmarks/mimic_scale.py generate --out DIR --k 500 --small-only
    python benchmarks/mimic_scale.py cxr --data DIR --k 500              # 377,110 images linked to K x 140 stays

Full MIMIC-IV size (K = 500: 70,000 ICU stays, 334 M chartevents rows, 54 M labevents rows, 2.3 GB of gzip):
``generate --out DIR --k 500`` (about 10 min on one core, gzip level 1), then ``run --data DIR --k 500``.

``generate`` writes copy c = 0 .. K-1 of every table the adapter reads, in the official layout (``hosp/``,
``icu/``, gzip CSV, the demo's columns and text as they are), with ``subject_id``, ``hadm_id``, ``stay_id``
(and the row ids ``labevent_id``, ``specimen_id``) shifted by c x 10^8; times are unchanged, so every copy
holds the same stays and events, and copy 0 is the demo itself. ``d_icd_diagnoses`` (a dictionary) is copied
once. The demo's ODbL licence goes with every copy (``LICENSE.txt``, ``SOURCE.md``).

``run`` prints, per K, the wall time and the peak resident memory (``ru_maxrss`` of the child process,
from ``os.wait4``: native memory included, which ``tracemalloc`` does not see) of the command-line
extraction, the stays and the SHA-256 of the cached ``ehr`` array; ``tiles demo`` checks that it is the
K = 1 array (of this run or an earlier one in the same ``--work``) repeated K times (stays sort by stay_id, so
copy by copy), which holds only if every block of stays was discretised as the demo. ``--phases`` adds a
second child that times the adapter's steps (cohort and events, then the EHR arrays) without the cache. The
CPU time of other processes on the machine slows the wall time; compare runs made together. The children run
in the work folder, so ``PYTHONPATH=/other/checkout`` measures another copy of the code (the ``code`` column).

``cxr`` writes ``DIR/k<K>-cxr`` (once): ``mimic-cxr-2.0.0-metadata.csv.gz`` with the 12 columns of
MIMIC-CXR-JPG 2.0.0 and ``--rows`` images (377,110, as MIMIC-CXR-JPG), ``-split`` and ``-chexpert`` files,
a tiny JPEG for each image of a study inside an ICU stay (the linked studies) and no other, their reports
under ``files/``, and ``mimic-cxr-reports.zip`` with a report for every study (227,835 in MIMIC-CXR). It
then times, in a child process, what the adapter does to link them: reading the metadata, choosing each
stay's image (``task="both"`` window, AP), the official split, the image files' existence, and reading the
chosen reports from the folder and from the zip.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import polars as pl

DEMO = Path("/work/shared/data/mimic-iv-demo-2.2")
ID_STRIDE = 10**8  # copy c adds c * ID_STRIDE to every identifier (demo ids are 8 digits)
SHIFTED = ("subject_id", "hadm_id", "stay_id", "labevent_id", "specimen_id")
SMALL_TABLES = ("hosp/patients", "hosp/admissions", "icu/icustays", "hosp/diagnoses_icd")
EVENT_TABLES = ("icu/chartevents", "hosp/labevents")
DICTIONARIES = ("hosp/d_icd_diagnoses",)
CXR_IMAGES = 377_110  # MIMIC-CXR-JPG 2.0.0: 377,110 images, 227,835 studies, 65,379 subjects
META_COLUMNS = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]
CHEXPERT = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]


# ---------------------------------------------------------------------------------------------- generate
def write_copies(src: Path, dst: Path, k: int, level: int = 1) -> int:
    """Write ``k`` copies of the CSV table ``src`` to the gzip CSV ``dst``, identifiers of copy c shifted by
    c x 10^8; every other field is written back as the text it was read as. Returns the rows written."""
    df = pl.read_csv(src, infer_schema=False)
    ids = {c: df[c].str.strip_chars().cast(pl.Int64, strict=False) for c in df.columns if c in SHIFTED}
    dst.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(dst, "wb", compresslevel=level) as f:
        f.write(df.head(0).write_csv().encode())
        for c in range(k):
            part = df if c == 0 else df.with_columns((v + c * ID_STRIDE).cast(pl.Utf8).alias(n) for n, v in ids.items())
            f.write(part.write_csv(include_header=False).encode())
    return df.height * k


def generate(out: Path, k: int, demo: Path = DEMO, small_only: bool = False, level: int = 1) -> Path:
    """``out/k<K>``: K identifier-shifted copies of the MIMIC-IV demo in its own layout (see the module doc)."""
    root = out / f"k{k}"
    tables = SMALL_TABLES if small_only else SMALL_TABLES + EVENT_TABLES
    rows = {}
    for t in tables:
        dst = root / f"{t}.csv.gz"
        if dst.is_file():
            continue
        tmp = dst.with_suffix(".part")
        rows[t] = write_copies(demo / f"{t}.csv.gz", tmp, k, level)
        tmp.rename(dst)
    for t in DICTIONARIES:
        (root / t).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(demo / f"{t}.csv.gz", root / f"{t}.csv.gz")
    shutil.copyfile(demo / "LICENSE.txt", root / "LICENSE.txt")
    (root / "SOURCE.md").write_text(
        f"{k} identifier-shifted copies of the MIMIC-IV Clinical Database Demo 2.2 (Open Database License 1.0, "
        f"LICENSE.txt). Copy c = 0..{k - 1}: {', '.join(SHIFTED)} + c x {ID_STRIDE}; every other field as in the "
        f"demo.{' Small tables only (no events).' if small_only else ''} Written by benchmarks/mimic_scale.py.\n"
    )
    for t, n in rows.items():
        print(f"  {root.name}/{t}: {n:,} rows")
    return root


# ---------------------------------------------------------------------------------------------- run
EXTRACT = (
    "import sys, omnifuse; print('omnifuse:', omnifuse.__file__, flush=True); from omnifuse.cli import app; "
    "sys.argv[0] = 'omnifuse'; sys.exit(app())"
)
PHASES = """
import json, resource, sys, time
from omnifuse.extract.datasets.mimic import MimicAdapter
t0 = time.perf_counter()
a = MimicAdapter(sys.argv[1], workdir=sys.argv[2])
c = a.cohort()
t1 = time.perf_counter()
x = a.ehr_arrays()
t2 = time.perf_counter()
print(json.dumps({"stays": len(c), "events_s": t1 - t0, "ehr_s": t2 - t1}))
"""


def measured(cmd: list[str], log: Path) -> tuple[float, int, int]:
    """Run ``cmd`` in the folder of ``log`` (not the repository: ``python -c`` puts its working folder first on
    the path, so ``PYTHONPATH`` chooses the code measured), output to ``log``: (wall seconds, peak RSS bytes of
    that process, exit code)."""
    t0 = time.perf_counter()
    with open(log, "wb") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
        _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    p.returncode = os.waitstatus_to_exitcode(status)
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return wall, usage.ru_maxrss * scale, p.returncode


def ehr_digest(cache: Path) -> tuple[int, str, np.ndarray]:
    from omnifuse.cache.reader import load_cache

    x = np.ascontiguousarray(load_cache(cache, modalities=["ehr"]).modalities["ehr"].x)
    return x.shape[0], hashlib.sha256(x.tobytes()).hexdigest(), x


def run(data: Path, ks: list[int], work: Path, phases: bool = False, keep: bool = False) -> list[dict]:
    """One ``omnifuse extract --dataset mimic`` per K (fresh process); prints and returns the measurements."""
    data, work = data.resolve(), work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"{'K':>5s} {'stays':>7s} {'wall s':>8s} {'peak GiB':>9s} {'tiles demo':>10s}  ehr sha256[:16]  code",
        flush=True,
    )
    ref = work / "k1-ehr.npy"  # the K = 1 array, kept for the check in later runs
    base: np.ndarray | None = np.load(ref) if ref.is_file() else None
    out = []
    for k in ks:
        root = data / f"k{k}"
        cache, wd = work / f"k{k}.zarr", work / f"k{k}-work"
        shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(wd, ignore_errors=True)
        wd.mkdir()
        cmd = [sys.executable, "-c", EXTRACT, "extract", "--dataset", "mimic", "--root", str(root)]
        cmd += ["--out", str(cache), "--workdir", str(wd), "--no-progress"]
        wall, peak, rc = measured(cmd, work / f"k{k}.log")
        if rc != 0:
            raise SystemExit(f"K={k}: extract failed with exit code {rc}; see {work / f'k{k}.log'}")
        code = (work / f"k{k}.log").read_text().splitlines()[0].removeprefix("omnifuse: ")
        n, digest, x = ehr_digest(cache)
        if k == 1:
            base = x
            np.save(ref, x)
        tiles = "-"
        if base is not None:
            h = hashlib.sha256()
            for _ in range(k):
                h.update(base.tobytes())
            tiles = "yes" if h.hexdigest() == digest else "NO"
        r = {"k": k, "stays": n, "wall_s": wall, "peak_gib": peak / 2**30, "tiles_demo": tiles, "sha256": digest}
        r["code"] = code
        if phases:
            shutil.rmtree(wd, ignore_errors=True)
            wd.mkdir()
            pw, pp, prc = measured([sys.executable, "-c", PHASES, str(root), str(wd)], work / f"k{k}-phases.log")
            if prc != 0:
                raise SystemExit(f"K={k}: adapter run failed; see {work / f'k{k}-phases.log'}")
            ph = json.loads((work / f"k{k}-phases.log").read_text().strip().splitlines()[-1])
            r.update(adapter_s=pw, adapter_peak_gib=pp / 2**30, events_s=ph["events_s"], ehr_s=ph["ehr_s"])
        line = f"{k:5d} {n:7d} {wall:8.1f} {peak / 2**30:9.2f} {tiles:>10s}  {digest[:16]}  {Path(code).parent}"
        if phases:
            line += f"   adapter: events {r['events_s']:.1f} s, EHR {r['ehr_s']:.1f} s"
            line += f", peak {r['adapter_peak_gib']:.2f} GiB"
        print(line, flush=True)
        out.append(r)
        if not keep:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(wd, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------------------- cxr
def tiny_jpeg() -> bytes:
    """An 8 x 8 grey JPEG (the linked images only need to exist and decode)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="JPEG")
    return buf.getvalue()


REPORT = (
    "                                 FINAL REPORT\n EXAMINATION:  CHEST (PORTABLE AP)\n\n INDICATION:  ___ with "
    "hypoxia.\n\n FINDINGS:\n \n Endotracheal tube terminates 4 cm above the carina.  Heart size is normal.  No "
    "pneumothorax.\n \n IMPRESSION:\n \n No acute cardiopulmonary process.\n"
)


def _dicom_ids(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct 44-character dicom_ids (five dash-separated groups of 8 hex digits, as MIMIC-CXR)."""
    a = rng.integers(0, 2**32, size=(n, 5), dtype=np.uint64)
    return ["-".join(f"{v:08x}" for v in row) for row in a.tolist()]


def generate_cxr(root: Path, cxr: Path, rows: int = CXR_IMAGES, seed: int = 0, linked_fraction: float = 0.3) -> dict:
    """A MIMIC-CXR-JPG layout of ``rows`` images for the ICU stays of ``root`` (see the module doc)."""
    rng = np.random.default_rng(seed)
    st = pl.read_csv(root / "icu/icustays.csv.gz", infer_schema=False).select(
        pl.col("subject_id").cast(pl.Int64),
        pl.col("intime").str.to_datetime(time_unit="us"),
        pl.col("outtime").str.to_datetime(time_unit="us"),
    )
    n = st.height
    # linked studies: 1-3 inside the stays of a fraction of stays (AP portable, sometimes PA + lateral)
    pick = np.flatnonzero(rng.random(n) < linked_fraction)
    per = rng.integers(1, 4, size=pick.size)
    srow = np.repeat(pick, per)
    span = (st["outtime"] - st["intime"]).dt.total_microseconds().to_numpy()[srow]
    t_in = st["intime"].to_numpy()[srow] + (rng.random(srow.size) * span).astype("timedelta64[us]")
    linked = pl.DataFrame({"subject_id": st["subject_id"].to_numpy()[srow], "t": t_in, "linked": True})
    # other studies: ICU subjects 2-400 days before an ICU stay, and subjects without ICU stays; 1.655 images per
    # study as MIMIC-CXR (377,110 / 227,835), enough studies for ``rows`` images
    others = max(0, int((rows - 1.655 * linked.height) / 1.655 * 1.05))
    own = rng.random(others) < 0.5
    orow = rng.integers(0, n, size=others)
    before = (rng.uniform(2, 400, size=others) * 86400e6).astype("timedelta64[us]")
    t_out = st["intime"].to_numpy()[orow] - before
    icu_subjects = st["subject_id"].unique().to_numpy()
    pool = np.setdiff1d(19_000_000 + np.arange(40_000), icu_subjects)  # 8-digit ids of no ICU stay
    subj = np.where(own, st["subject_id"].to_numpy()[orow], rng.choice(pool, size=others))
    studies = pl.concat([linked, pl.DataFrame({"subject_id": subj, "t": t_out, "linked": False})])
    ns = studies.height
    studies = studies.with_columns(
        pl.Series("study_id", 50_000_000 + rng.permutation(10_000_000)[:ns]),
        pl.Series("images", rng.choice([1, 2], size=ns, p=[0.345, 0.655])),
        pl.Series(
            "first_view", np.where(rng.random(ns) < np.where(studies["linked"].to_numpy(), 0.85, 0.3), "AP", "PA")
        ),
    )
    # a study is linked when it lies inside any ICU stay of its subject (an earlier stay included)
    inside = (
        studies.select("study_id", "subject_id", "t")
        .join(st, on="subject_id")
        .filter((pl.col("t") >= pl.col("intime")) & (pl.col("t") <= pl.col("outtime")))
        .select("study_id")
        .unique()
    )
    studies = studies.with_columns(pl.col("study_id").is_in(inside["study_id"].implode()).alias("linked"))
    img = studies.with_columns(pl.int_ranges(0, pl.col("images")).alias("i")).explode("i").head(rows)
    view = pl.when(pl.col("i") == 0).then(pl.col("first_view")).otherwise(pl.lit("LATERAL"))
    meta = img.with_columns(
        pl.Series("dicom_id", _dicom_ids(rng, img.height)),
        view.alias("ViewPosition"),
    ).with_columns(
        pl.when(pl.col("first_view") == "AP")
        .then(pl.lit("CHEST (PORTABLE AP)"))
        .otherwise(pl.lit("CHEST (PA AND LAT)"))
        .alias("PerformedProcedureStepDescription"),
        pl.when(pl.col("ViewPosition") == "LATERAL").then(3050).otherwise(3056).alias("Rows"),
        pl.when(pl.col("ViewPosition") == "LATERAL").then(2539).otherwise(2544).alias("Columns"),
        pl.col("t").dt.strftime("%Y%m%d").alias("StudyDate"),
        (
            (
                pl.col("t").dt.hour().cast(pl.Int64) * 10000 + pl.col("t").dt.minute() * 100 + pl.col("t").dt.second()
            ).cast(pl.Utf8)
            + "."
            + (pl.col("t").dt.millisecond().cast(pl.Utf8).str.zfill(3))
        ).alias("StudyTime"),
        pl.when(pl.col("first_view") == "AP")
        .then(pl.lit("CHEST (PORTABLE AP)"))
        .otherwise(pl.lit("CHEST (PA AND LAT)"))
        .alias("ProcedureCodeSequence_CodeMeaning"),
        pl.col("ViewPosition")
        .replace_strict({"AP": "antero-posterior", "PA": "postero-anterior", "LATERAL": "lateral"})
        .alias("ViewCodeSequence_CodeMeaning"),
        pl.when(pl.col("first_view") == "AP")
        .then(pl.lit("Recumbent"))
        .otherwise(pl.lit("Erect"))
        .alias("PatientOrientationCodeSequence_CodeMeaning"),
    )
    cxr.mkdir(parents=True, exist_ok=True)
    with gzip.open(cxr / "mimic-cxr-2.0.0-metadata.csv.gz", "wb", compresslevel=1) as f:
        meta.select(META_COLUMNS).write_csv(f)
    subjects = meta.select("subject_id").unique()
    sp = subjects.with_columns(
        pl.Series("split", rng.choice(["train", "validate", "test"], size=subjects.height, p=[0.978, 0.008, 0.014]))
    )
    with gzip.open(cxr / "mimic-cxr-2.0.0-split.csv.gz", "wb", compresslevel=1) as f:
        meta.select("dicom_id", "study_id", "subject_id").join(sp, on="subject_id").write_csv(f)
    st_ids = meta.select("subject_id", "study_id").unique(maintain_order=True)
    labels = rng.choice(np.array([None, 1.0, 0.0, -1.0], dtype=object), size=(st_ids.height, len(CHEXPERT)))
    chex = st_ids.with_columns(pl.Series(c, labels[:, j].tolist(), dtype=pl.Float64) for j, c in enumerate(CHEXPERT))
    with gzip.open(cxr / "mimic-cxr-2.0.0-chexpert.csv.gz", "wb", compresslevel=1) as f:
        chex.write_csv(f)
    # JPEGs of the linked studies only; their reports as files; every study's report in the zip
    jpegs, jpeg = 0, tiny_jpeg()
    for s, study, dicom in meta.filter(pl.col("linked")).select("subject_id", "study_id", "dicom_id").iter_rows():
        d = cxr / "files" / f"p{str(s)[:2]}" / f"p{s}" / f"s{study}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"{dicom}.jpg").write_bytes(jpeg)
        (d.parent / f"s{study}.txt").write_text(REPORT)
        jpegs += 1
    with zipfile.ZipFile(cxr / "mimic-cxr-reports.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for s, study in st_ids.iter_rows():
            z.writestr(f"files/p{str(s)[:2]}/p{s}/s{study}.txt", REPORT)
    shutil.copyfile(root / "LICENSE.txt", cxr / "LICENSE-mimic-iv-demo.txt")
    (cxr / "SOURCE.md").write_text(
        "Generated by benchmarks/mimic_scale.py: MIMIC-CXR-JPG 2.0.0 file layout with made-up studies for the "
        "identifier-shifted MIMIC-IV demo stays of the sibling folder (LICENSE-mimic-iv-demo.txt applies to "
        "those stays). No MIMIC-CXR data.\n"
    )
    return {"images": meta.height, "studies": st_ids.height, "subjects": subjects.height, "jpegs": jpegs}


LINK = """
import json, resource, sys, time
import numpy as np, polars as pl
from omnifuse.extract.datasets.mimic import MimicAdapter, cxr
from omnifuse.extract.datasets.mimic.cohort import base_stays
root, croot, wd = sys.argv[1:4]
a = MimicAdapter(root, cxr_root=croot, workdir=wd)
stays, _ = base_stays(a.layout)
out = {"stays": stays.height}
t = time.perf_counter()
extra, splits = {}, {}
a._match_cxr(stays, extra, splits)  # what cohort() runs to link: metadata, choice, official split
out["link_s"] = time.perf_counter() - t
chosen = sorted(a._chosen.items())
out["chosen"] = len(chosen)
t = time.perf_counter()
out["jpegs_found"] = sum(cxr.image_path(croot, *c).is_file() for _, c in chosen)
out["files_s"] = time.perf_counter() - t
for name, src in (("folder", croot), ("zip", croot + "/mimic-cxr-reports.zip")):
    a.reports_root, a._reports = src, None
    t = time.perf_counter()
    got = [a._report(c[0], c[1]) for _, c in chosen]
    out[f"reports_{name}_s"] = time.perf_counter() - t
    out[f"reports_{name}"] = sum(getattr(g, "provenance", None) == 0 for g in got)
out["peak_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
"""


def cxr_link(data: Path, k: int, rows: int, work: Path) -> dict:
    data, work = data.resolve(), work.resolve()
    root = data / f"k{k}"
    croot = data / f"k{k}-cxr"
    if not (croot / "mimic-cxr-reports.zip").is_file():
        t = time.perf_counter()
        g = generate_cxr(root, croot, rows)
        print(f"wrote {croot}: {g} in {time.perf_counter() - t:.0f} s", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work) as wd:
        wall, peak, rc = measured([sys.executable, "-c", LINK, str(root), str(croot), wd], work / f"cxr-k{k}.log")
    if rc != 0:
        raise SystemExit(f"linking failed; see {work / f'cxr-k{k}.log'}")
    r = json.loads((work / f"cxr-k{k}.log").read_text().strip().splitlines()[-1])
    r.update(process_s=wall, process_peak_gib=peak / 2**30)
    print(
        f"{r['stays']:,} stays, {rows:,} images: link {r['link_s']:.1f} s (metadata, choice, split) -> "
        f"{r['chosen']:,} stays with an image; image files checked {r['files_s']:.1f} s; reports read: folder "
        f"{r['reports_folder_s']:.1f} s, zip {r['reports_zip_s']:.1f} s (index included); process {wall:.1f} s, "
        f"peak {peak / 2**30:.2f} GiB"
    )
    return r


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("generate", help="write K identifier-shifted copies of the MIMIC-IV demo")
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--k", type=int, nargs="+", default=[1, 10, 50])
    g.add_argument("--demo", type=Path, default=DEMO)
    g.add_argument("--small-only", action="store_true", help="only the stay tables (enough for `cxr`)")
    g.add_argument("--gzip-level", type=int, default=1)
    r = sub.add_parser("run", help="time and peak memory of `omnifuse extract --dataset mimic` per K")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--k", type=int, nargs="+", default=[1, 10, 50])
    r.add_argument("--work", type=Path, default=None, help="caches and logs (default DATA/runs)")
    r.add_argument("--phases", action="store_true", help="also time the adapter's steps in another child")
    r.add_argument("--keep", action="store_true", help="keep the caches")
    r.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    c = sub.add_parser("cxr", help="link a MIMIC-CXR-JPG metadata table of --rows images to the stays of DATA/k<K>")
    c.add_argument("--data", type=Path, required=True)
    c.add_argument("--k", type=int, default=500)
    c.add_argument("--rows", type=int, default=CXR_IMAGES)
    c.add_argument("--work", type=Path, default=None)
    a = p.parse_args(argv)
    if a.cmd == "generate":
        for k in a.k:
            t = time.perf_counter()
            root = generate(a.out, k, a.demo, a.small_only, a.gzip_level)
            print(f"wrote {root} in {time.perf_counter() - t:.0f} s", flush=True)
    elif a.cmd == "run":
        res = run(a.data, a.k, a.work or a.data / "runs", a.phases, a.keep)
        if a.json:
            a.json.write_text(json.dumps(res, indent=1))
    else:
        cxr_link(a.data, a.k, a.rows, a.work or a.data / "runs")


if __name__ == "__main__":
    main()

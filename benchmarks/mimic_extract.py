"""Time and peak memory of building the MIMIC cohort and all EHR arrays, one fresh process per root.

Usage: python benchmarks/mimic_extract.py [ROOT ...]  (default: the two demos under ../shared/data)

At scale (K identifier-shifted copies of the MIMIC-IV demo, up to full MIMIC-IV size, through the command line):
``benchmarks/mimic_scale.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys

DEFAULT = ["/work/shared/data/mimic-iii-demo-1.4", "/work/shared/data/mimic-iv-demo-2.2"]
CHILD = """
import json, resource, sys, time, tempfile
t0 = time.perf_counter()
from omnifuse.extract.datasets.mimic import MimicAdapter
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t1 = time.perf_counter()
with tempfile.TemporaryDirectory() as w:
    a = MimicAdapter(sys.argv[1], workdir=w)
    c = a.cohort()
    t2 = time.perf_counter()
    x = a.ehr_arrays()
    t3 = time.perf_counter()
print(json.dumps({"stays": len(c), "shape": list(x.shape), "import_s": t1 - t0, "cohort_s": t2 - t1,
                  "ehr_s": t3 - t2, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_import_mb": base / 1024}))
"""


def main(roots: list[str]) -> None:
    head = f"{'root':45s} {'stays':>6s} {'cohort+events s':>16s} {'EHR s':>7s}"
    print(f"{head} {'peak RSS MB':>12s} {'after import MB':>16s}")
    for root in roots:
        out = subprocess.run([sys.executable, "-c", CHILD, root], capture_output=True, text=True, check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"{root:45s} {r['stays']:6d} {r['cohort_s']:16.2f} {r['ehr_s']:7.2f} {r['peak_rss_mb']:12.0f} "
            f"{r['rss_after_import_mb']:16.0f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)

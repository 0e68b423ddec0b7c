#!/usr/bin/env bash
# The data path and MIL training on a CUDA machine, in about 6 minutes. Run from the
# repository root:
#
#   bash benchmarks/gpu_check.sh            # results also in $OUT (default ./gpu_check_out)
#
# Needs python with torch, torchvision, h5py, numpy, pandas, scikit-learn, pillow (no
# OpenSlide, Snakemake or tqdm). Each step has its own time limit; a failed step does not stop
# the others. Steps: the loader by threads (CPU decode and nvJPEG), embedding and SimSiam at
# 256 px with ResNet-50 (pipeline vs the model alone, bf16 + channels-last), MIL training
# fold by fold vs the folds stacked (CPU and CUDA), CUDA checks, and the unit tests with CUDA
# branches when pytest is there.
set -u
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}src"
export PYTHONUNBUFFERED=1 CSMIL_NO_PROGRESS=1
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
CORES="$(nproc)"
# Sizes (smaller ones only to try the script on a CPU, e.g. PX=32 BACKBONE=resnet18 N=64).
PX="${PX:-256}"
BACKBONE="${BACKBONE:-resnet50}"
N="${N:-6144}"
DECODES="${DECODES:-cuda cpu}"  # loader decode modes of the encoder benchmark
T0=$(date +%s)
FAILED=()

step() {  # step NAME LIMIT_SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local t=$(date +%s)
  echo "=== $name (limit ${limit}s) $(date -u +%H:%M:%S)" | tee -a "$OUT/summary.txt"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc in $(( $(date +%s) - t ))s" | tee -a "$OUT/summary.txt"
  [ "$rc" -eq 0 ] || FAILED+=("$name")
}

{
  nvidia-smi -L || true
  "$PY" -c "import torch, torchvision, sys; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torch.cuda.get_device_name())" || true
  echo "cores $CORES, load $(cut -d' ' -f1-3 /proc/loadavg)"
} 2>&1 | tee "$OUT/machine.txt"

step loader 80 "$PY" benchmarks/bench_loader.py --patch-px "$PX" --n-patches $((N / 3)) \
  --threads 1 2 4 8 "$CORES" --repeats 2
step encoders 160 "$PY" benchmarks/bench_encoder.py --patch-px "$PX" --backbone "$BACKBONE" \
  --n-patches "$N" --batch-size 128 --embed-batch-size 128 --epochs 3 \
  --threads "$CORES" --decode $DECODES
step mil 90 "$PY" benchmarks/bench_mil.py --epochs 3 \
  --methods deepattnmisl_20x csmil dtfd hipt --devices cpu cuda
step cuda_checks 45 "$PY" benchmarks/cuda_checks.py
if "$PY" -c "import pytest" 2>/dev/null; then
  step unit_tests 70 "$PY" -m pytest -q -p no:cacheprovider -W ignore::DeprecationWarning \
    -m "not slow and not slurm" \
    tests/test_loader.py tests/test_embed.py tests/test_resume.py tests/test_simsiam.py
else
  echo "=== unit_tests: pytest is not installed; skipped (cuda_checks covers the CUDA paths)" \
    | tee -a "$OUT/summary.txt"
fi

echo "=== total $(( $(date +%s) - T0 ))s; failed steps: ${FAILED[*]:-none}" | tee -a "$OUT/summary.txt"
grep -h -A8 "^step \|^reader " "$OUT/encoders.txt" "$OUT/loader.txt" 2>/dev/null | tee -a "$OUT/summary.txt"

#!/usr/bin/env bash
# Every GPU test and benchmark of the project in one call, so a lent GPU is used once.
# Budget: under 8 minutes on one H100/H200 (each step has its own timeout; the sum is 7.5 min).
#
#   bash benchmarks/gpu_suite.sh            # tables and logs under $OUT (default benchmarks/gpu_results)
#
# On the workplace's device machine (run from the repo root; its python3 holds torch, triton,
# h5py, timm, transformers, onnx). Packages its image lacks (deepspeed, soundfile, pydantic,
# typer; mamba-ssm and causal-conv1d for the reference kernels) travel as wheels in .whl/ and
# are installed to /tmp/site first (see the device README). Without mamba-ssm the Audio Mamba
# rows show the pure-torch path only, and say so.
set -uo pipefail
OUT=${OUT:-benchmarks/gpu_results}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 DASS_DISTILL_NO_PROGRESS=1 COLUMNS=160
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# The toolkit itself (its packages map top-level folders to dass_distill.*), no dependencies fetched.
$PY -m pip install -q --no-deps --no-build-isolation -e . >"$OUT/install.log" 2>&1 || { echo "install failed: $OUT/install.log"; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"

status=0
step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output
  local name=$1 limit=$2; shift 2
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  tail -n 40 "$OUT/$name.txt"
  [ $rc -eq 0 ] || { echo "!! $name exited $rc"; status=1; }
}

# 1. Correctness on CUDA: the Triton cross-scan kernels, the selective scan's dispatch, the
#    Audio Mamba mixer on the CUDA kernels against the CPU path (tests skip these without a GPU).
step tests_cuda 150 $PY -m pytest -q -p no:cacheprovider -k cuda \
  tests/kernels/test_cross_scan_triton.py tests/kernels/test_selective_scan.py tests/test_bimamba.py
# 2. Triton cross-scan / cross-merge bandwidth against a device copy (target >= 80%).
step cross_scan 60 $PY benchmarks/bench_cross_scan_gpu.py
# 3. Audio Mamba and DASS training steps, mamba-ssm kernels vs the torch path, 10 s and 60 s.
step audio_mamba 150 $PY benchmarks/bench_audio_mamba_gpu.py --models aum_small ssamba_small dass_small \
  --batch 16 --seconds 10 60 --steps 3
# 4. Training throughput with cached teacher logits vs the teacher online (DASS-small, bf16).
step train_throughput 60 $PY benchmarks/bench_train_throughput.py --device cuda --student dass_small \
  --batch 32 --precision bf16
# 5. Teachers' forward throughput (caching speed).
step teachers 30 $PY benchmarks/bench_teachers.py --device cuda --batch 64
echo "tables and logs in $OUT"
exit $status

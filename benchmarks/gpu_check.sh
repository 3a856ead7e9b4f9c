#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network): build the extension with CUDA, run the
# CUDA and Triton tests, then the GPU benchmark table, printed last. Budget: under 8 minutes on an H100.
#
#   bash benchmarks/gpu_check.sh            # from the repository root
#
# Logs and the table go to $OUT (the device tool's output folder) when set, else to ./gpu_check_out.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"
unset TRITON_INTERPRET
status=0

echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

echo "== build (CUDA, archs $TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
if ! "$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1; then
  echo "BUILD FAILED (tail of $OUT/build.log):"; tail -40 "$OUT/build.log"; status=1
fi
echo "build: $(( $(date +%s) - start )) s"
"$PY" -m stmodels.info | tee "$OUT/info.txt"

echo "== GPU tests (cuda and triton backends, compiled ops)"
start=$(date +%s)
"$PY" -m pytest -q -x -p no:cacheprovider tests/test_backends_scan.py tests/test_backends_adaln.py \
  tests/test_compiled_ops.py tests/test_triton_scan.py tests/test_triton_adaln.py -k "cuda or triton" \
  > "$OUT/tests.log" 2>&1
test_status=$?
tail -15 "$OUT/tests.log"
echo "tests: exit $test_status, $(( $(date +%s) - start )) s"
[ "$test_status" -ne 0 ] && status=1

echo "== GPU table"
"$PY" benchmarks/gpu_table.py --out "$OUT/gpu_table.md" > "$OUT/table.log" 2>&1 || status=1
echo "tests exit $test_status; overall status $status"
cat "$OUT/table.log"
exit $status

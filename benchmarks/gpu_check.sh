#!/usr/bin/env bash
# One prepared check for a lent GPU machine (no network): build the extension with CUDA, run the
# CUDA and Triton tests, then the GPU table (each output checked against the reference before it is
# timed). Ends with a PASS/FAIL summary, then the table. Budget: under 8 minutes on an H100/H200.
#
#   bash benchmarks/gpu_check.sh              # from the repository root, on the GPU machine
#   bash benchmarks/gpu_check.sh --dry-run    # anywhere: argument parsing, the test selection it
#                                             # would run (collected, not run; shows the cuda tests),
#                                             # and the table code on small CPU tensors
#
# Logs and the table go to $OUT (the device tool's output folder) when set, else ./gpu_check_out.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (expected --dry-run or --help)" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-gpu_check_out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export MAX_JOBS="${MAX_JOBS:-16}"

# Every backend test, parametrised over cpu/cuda/triton; "-k cuda or triton" keeps the GPU ones.
TEST_FILES=(tests/test_backends_scan.py tests/test_backends_adaln.py tests/test_compiled_ops.py
            tests/test_triton_scan.py tests/test_triton_adaln.py tests/test_scan_last_state.py
            tests/test_raw_ops.py)
SELECT="cuda or triton"
summary=()
status=0
record() {  # record NAME EXIT_CODE
  if [ "$2" -eq 0 ]; then summary+=("PASS $1"); else summary+=("FAIL $1 (exit $2)"); status=1; fi
}

if [ "$DRY_RUN" -eq 1 ]; then
  echo "== dry run: test selection (collected only)"
  "$PY" -m pytest --collect-only -q -p no:cacheprovider "${TEST_FILES[@]}" -k "$SELECT" > "$OUT/selection.txt" 2>&1
  collect_status=$?
  total=$(grep -c '::' "$OUT/selection.txt" || true)
  cuda=$(grep '::' "$OUT/selection.txt" | grep -c 'cuda' || true)
  echo "selected $total test ids, $cuda of them cuda"
  grep '::' "$OUT/selection.txt" | grep 'cuda' | head -5
  record "test selection (collected $total, cuda $cuda)" $(( collect_status != 0 || cuda == 0 ))
  echo "== dry run: table code on CPU tensors"
  "$PY" benchmarks/gpu_table.py --dry-run --out "$OUT/gpu_table.md" > "$OUT/table.log" 2>&1
  record "table code (dry run)" $?
  echo "== summary"
  printf '%s\n' "${summary[@]}"
  cat "$OUT/table.log"
  [ "$status" -eq 0 ] && echo "PASS (dry run)" || echo "FAIL (dry run)"
  exit $status
fi

unset TRITON_INTERPRET
echo "== device"; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

echo "== build (CUDA, archs $TORCH_CUDA_ARCH_LIST)"
start=$(date +%s)
"$PY" -m pip install --no-build-isolation --no-deps --no-index -e . > "$OUT/build.log" 2>&1
build_status=$?
[ "$build_status" -ne 0 ] && { echo "BUILD FAILED (tail of $OUT/build.log):"; tail -40 "$OUT/build.log"; }
record "build ($(( $(date +%s) - start )) s)" $build_status
"$PY" -m stmodels.info | tee "$OUT/info.txt"

echo "== GPU tests (cuda and triton backends, compiled ops, raw-op checks)"
start=$(date +%s)
"$PY" -m pytest -q -p no:cacheprovider "${TEST_FILES[@]}" -k "$SELECT" > "$OUT/tests.log" 2>&1
test_status=$?
tail -15 "$OUT/tests.log"
record "GPU tests ($(( $(date +%s) - start )) s, log $OUT/tests.log)" $test_status

echo "== GPU table"
"$PY" benchmarks/gpu_table.py --out "$OUT/gpu_table.md" > "$OUT/table.log" 2>&1
record "GPU table (outputs vs reference)" $?

echo "== summary"
printf '%s\n' "${summary[@]}"
cat "$OUT/table.log"
[ "$status" -eq 0 ] && echo "PASS" || echo "FAIL"
exit $status

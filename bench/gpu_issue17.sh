#!/usr/bin/env bash
# Issue #17's GPU figures in one run (prepared on CPU, not yet run: no GPU was lent to the session that wrote it).
#
#   OUT=/some/folder bash bench/gpu_issue17.sh
#
# Runs from the repository root with the project's virtualenv (.venv) or the python on PATH, on one CUDA GPU,
# and writes everything under $OUT (default: ./gpu_issue17_out):
#   env.txt                        GPU name, driver, torch / triton / transformers versions
#   1_test_kernels_gpu.log         pytest tests/test_kernels_gpu.py (every CUDA kernel test, `gpu` marker)
#   1_test_unpad_cuda.log          the unpadded encoder on CUDA: host-device syncs per step (sync debug mode)
#   2_kernels_{padded,dense}.*     attention benchmark: padded rows (SST-2 / IMDB lengths) vs SDPA, dense rows
#   3_train_accuracy_cuda.*, .log  MiniLM SST-2, one epoch: nanoft (bucketed, unpadded, Triton, bf16) vs
#                                  transformers (dynamic padding, bf16 autocast, SDPA), same run; dev accuracy
#   4_train_compile.*, .log        the same epoch with nanoft under torch.compile
#   5_unpad_cuda.*, .log           unpad on vs off, same batches, bf16 (bench/unpad.py)
# Each step has its own time limit (the whole script stays under ~9 minutes) and a failed or timed-out step
# is recorded in steps.txt while the next one still runs.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_issue17_out}"
mkdir -p "$OUT"
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
PYTEST=pytest
[ -x .venv/bin/pytest ] && PYTEST=.venv/bin/pytest
export NANOFT_DATA_DIR="${NANOFT_DATA_DIR:-$(cd .. && pwd)/shared/data}"
[ -d "$NANOFT_DATA_DIR" ] || export NANOFT_DATA_DIR="$PWD/shared/data"
START=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, record the outcome
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    timeout --signal=INT --kill-after=20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 )) limit=$limit" | tee -a "$OUT/steps.txt"
}

{
    date -u
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
    "$PY" -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)'
    "$PY" -c 'import triton; print("triton", triton.__version__)' 2>&1
    "$PY" -c 'import transformers; print("transformers", transformers.__version__)' 2>&1
    echo "NANOFT_DATA_DIR=$NANOFT_DATA_DIR"
} >"$OUT/env.txt" 2>&1

# 1. GPU tests (kernels in fp16/bf16 against the fp32 reference), then the unpadded-encoder and kernel suites.
step 1_test_kernels_gpu 150 "$PYTEST" -q -p no:randomly -m gpu tests/test_kernels_gpu.py
step 1_test_unpad_cuda 90 "$PYTEST" -q -p no:randomly -m gpu tests/test_unpad.py

# 2. Attention benchmark (bench/attention_kernels.py), padded rows first (the >= 2x SDPA target: SST-2 and IMDB
#    length batches, nanoft mask path and varlen vs SDPA), saved before the dense rows (512..8192, flex capped).
cat >"$OUT/kernels_padded_first.py" <<'PYEOF'
import json, sys, time
from pathlib import Path
import torch
from nanoft.bench import attention_kernels as ak
from nanoft.bench.common import write_results

out = Path(sys.argv[1])
batches = ak.load_batches(None, 256, 32, seed=0)
meta = {"dtype": "bfloat16", "batch_lengths": json.dumps(batches), "order": "padded rows first, then dense"}
cols = ["case", "impl", "mode", "n", "d", "batch", "heads", "real_frac", "ms", "tflops", "peak_mb",
        "speedup_vs_sdpa", "speedup_vs_sdpa_flash", "status"]
show = lambda row: print(json.dumps(row, default=str), flush=True)
padded = ak.run_padded_bench({**batches, "sst2@128": batches["sst2"]}, 64, 12, torch.bfloat16, "cuda",
                             ak.GPU_PADDED_IMPLS, progress=show, pad_to={"sst2@128": 128})
notes = ("bench/attention_kernels.py's padded and dense cases (see its notes): nanoft and nanoft_varlen are called "
         "as the model calls them (validate=False: nothing read back from the device in the timed call).")
write_results("2_kernels_padded", padded, meta=meta, columns=cols, out_dir=out, notes=notes)
dense = ak.run_kernel_bench([512, 2048, 8192], [64, 128], None, None, torch.bfloat16, "cuda", ak.GPU_IMPLS,
                            flex_budget_s=40.0, progress=show)
write_results("2_kernels_dense", dense, meta=meta, columns=cols, out_dir=out, notes=notes)
PYEOF
step 2_kernels 170 "$PY" "$OUT/kernels_padded_first.py" "$OUT"

# 3. MiniLM SST-2, one epoch (67,349 examples), bf16: transformers vs nanoft in separate subprocesses.
step 3_train_accuracy 220 "$PY" -m nanoft.bench.train --mode accuracy --examples 67349 --precision bf16 \
    --device cuda --unpad on
for f in bench/results/train_accuracy_cuda.json bench/results/train_accuracy_cuda.md; do
    [ -f "$f" ] && cp "$f" "$OUT/3_$(basename "$f")"
done

# 4. The same epoch with torch.compile on nanoft's side (only if the time left allows it).
if [ $(( $(date +%s) - START )) -lt 380 ]; then
    step 4_train_compile 150 "$PY" -m nanoft.bench.train --mode accuracy --examples 67349 --precision bf16 \
        --device cuda --unpad on --compile
    for f in bench/results/train_accuracy_cuda.json bench/results/train_accuracy_cuda.md; do
        [ -f "$f" ] && cp "$f" "$OUT/4_$(basename "$f")"
    done
else
    echo "4_train_compile skipped: $(( $(date +%s) - START )) s used" | tee -a "$OUT/steps.txt"
fi

# 5. Unpadded vs padded encoder on the same batches (random and bucketed, SST-2 and AG News lengths).
if [ $(( $(date +%s) - START )) -lt 480 ]; then
    step 5_unpad 60 "$PY" -m nanoft.bench.unpad --device cuda --tasks sst2,agnews --samplers random,bucket \
        --precision bf16 --steps 30 --subset 4000 --attention-batches 2 --out-dir "$OUT" --name 5_unpad_cuda
else
    echo "5_unpad skipped: $(( $(date +%s) - START )) s used" | tee -a "$OUT/steps.txt"
fi
echo "total seconds=$(( $(date +%s) - START ))" | tee -a "$OUT/steps.txt"

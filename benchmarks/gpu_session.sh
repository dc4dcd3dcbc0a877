#!/usr/bin/env bash
# One device session of the GPU tier: the whole of it, or the part that fits BUDGET_MIN minutes of runs.
#
#   here (with ../shared/data):  python benchmarks/gpu_kit.py pack
#   device tool:                 run(command="bash benchmarks/gpu_session.sh", carry=[".gpu_kit"], timeout_s=600)
#
# A session has 15 device minutes and one command at most 10: start-up, install (~20 s), unpacking (~30 s) and
# the timing runs (~1 min) leave the runs BUDGET_MIN=6 minutes. Finished runs are skipped, so a later session
# with runs/ restored (RUNS_TGZ, from this one's $OUT/gpu_runs.tgz) continues where this one stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_session_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu_kit/wheels/*.whl
export PYTHONPATH="/tmp/site:$PWD"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -m pip list 2>/dev/null | grep -i -E "^(torch|torchvision|transformers|datasets|accelerate|pyarrow|numpy) "
} | tee "$OUT/machine.txt"
python3 -c "import datasets, transformers, hf_semscale" || {
  echo "the carried wheels do not import on this machine (versions above): re-pack with versions that match" >&2
  exit 1
}
# Without MPS the 8 processes take turns on the GPU; with it their small ResNet-32 kernels run side by side.
# Started only if a CUDA probe then still works (else stopped again); MPS=0 skips it.
cuda_probe() { python3 -c "import torch; torch.ones(1, device='cuda').sum().item()" >/dev/null 2>&1; }
mps=off
if [ "${MPS:-1}" = 1 ] && command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
  trap 'echo quit | nvidia-cuda-mps-control >/dev/null 2>&1 || true' EXIT
  if cuda_probe; then mps=on; else echo quit | nvidia-cuda-mps-control >/dev/null 2>&1 || true; sleep 2; fi
fi
echo "MPS: $mps" | tee -a "$OUT/machine.txt"
cuda_probe || { echo "no working CUDA device here" >&2; exit 1; }
if [ -n "${RUNS_TGZ:-}" ]; then tar xzf "$RUNS_TGZ"; fi
python3 benchmarks/gpu_kit.py unpack
machine="one $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1), $(nproc) CPU cores, MPS $mps"
status=0
# The report goes to $OUT: its CPU section is empty there (the CPU runs are not on the device); its GPU section
# and the runs in gpu_runs.tgz are what to bring into benchmarks/results/long_tail.{md,json}.
# RUN_LIMIT_S stops an estimate that was too short before the device tool's 10 minutes do, so the finished runs
# are still tarred below (the report is then missing: rebuild it from the runs with --report-only).
budget=${BUDGET_MIN:-6}
timeout "${RUN_LIMIT_S:-$(python3 -c "print(int(60 * $budget + 90))")}" \
  python3 benchmarks/long_tail.py --tier gpu --workers "${WORKERS:-8}" --budget-min "$budget" \
  --machine "$machine" --out-dir "$OUT" >"$OUT/gpu_tier.log" 2>&1 || status=$?
grep -E "tier, |\[benchmark\]|nothing runs|Error" "$OUT/gpu_tier.log" | tail -40 || true
find benchmarks/runs/gpu \( -name results.json -o -name run_info.json -o -name error.txt \) -print \
  | tar czf "$OUT/gpu_runs.tgz" -T -
exit "$status"

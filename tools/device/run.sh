#!/usr/bin/env bash
# The one prepared run on a borrowed GPU machine (issues 9 and 13), from the repository root:
#   bash tools/device/run.sh OUT [TOTAL_SECONDS]
# 1. smoke: relaykit imports; a small default-preset study on cuda (timings per pass, per method) — stop if it fails;
# 2. the bench (issue 13): hook overhead, cached / uncached, vs upstream loops, CUDA graphs, memory;
# 3. the Sudoku study (issue 9): default preset x 3 seeds x recipes, and the gpu preset, with a training deadline
#    that leaves time to assemble the results inside TOTAL_SECONDS (default 560).
# Everything lands in OUT as at most 8 files (the device tool's limit): logs and one tarball of results.
# SKIP_SMOKE=1 / SKIP_BENCH=1 skip steps 1 / 2 (a rerun on a machine that already passed them).
set -u
OUT=${1:?OUT}; TOTAL=${2:-560}
T0=$(date +%s)
left() { echo $(( TOTAL - ($(date +%s) - T0) )); }
[ -e relaykit/adapters ] || cp -r adapters relaykit/adapters   # the wheel's layout, without installing
export PYTHONPATH=$PWD:$PWD/examples PYTHONUNBUFFERED=1
{
  date -u; nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv; nproc
  python3 -c "import sys, torch, transformers, relaykit; print(sys.version.split()[0], torch.__version__, transformers.__version__, torch.cuda.get_device_name())"
  [ -n "${SKIP_SMOKE:-}" ] || timeout 90 python3 examples/sudoku/fanout.py --preset default --seeds 0 --jobs 4 --device cuda --out /tmp/smoke \
    --set budget=200 warm=100 train_puzzles=400 eval_puzzles=50 val_puzzles=50 hard_puzzles=20 \
    --recipe base --recipe "alg1: update=all empty=zero relay_lr=1e-4"
  SMOKE=$?
  cat /tmp/smoke/base/summary.json; grep -h "Error\|error" /tmp/smoke/*/seed0/*.log | head -20
  echo "smoke exit $SMOKE after $(( $(date +%s) - T0 ))s"
} > "$OUT/smoke.log" 2>&1
if [ -z "${SKIP_SMOKE:-}" ] && ! grep -q "smoke exit 0" "$OUT/smoke.log"; then
  tail -n 60 /tmp/smoke/*/seed0/*.log >> "$OUT/smoke.log" 2>&1; tail -n 80 "$OUT/smoke.log"; exit 3
fi
B="python3 -m relaykit.bench"; if [ -z "${SKIP_BENCH:-}" ]; then
{
  timeout 90 $B decode --device cuda --profile
  timeout 45 $B decode --device cuda --skip overhead cache upstream --cuda-graphs --graphs-backend cudagraphs --forward-length 320
  timeout 30 $B memory --device cuda
  timeout 30 $B memory --device cuda --backbone qwen2 --vocab 32000
  echo "bench done after $(( $(date +%s) - T0 ))s"
} > "$OUT/bench.log" 2>&1; fi
DEADLINE=$(( $(left) - 75 ))
echo "study deadline ${DEADLINE}s" > "$OUT/study.log"
R=/tmp/runs
python3 examples/sudoku/fanout.py --preset default --seeds 0,1,2 --jobs 12 --device cuda --deadline "$DEADLINE" \
  --out "$R/default" \
  --recipe baseline \
  --recipe "alg1_lr1e4: update=all empty=zero relay_lr=1e-4" \
  --recipe "lr1e4: relay_lr=1e-4" \
  --recipe "policy: train_fraction=0 train_threshold=0.85" \
  --recipe "tied: tied=true" > "$OUT/fanout-default.log" 2>&1 &
python3 examples/sudoku/fanout.py --preset gpu --seeds 0 --jobs 4 --device cuda --deadline "$DEADLINE" \
  --out "$R/gpu" --set train_puzzles=10000 \
  --recipe baseline --recipe "alg1_lr: update=all empty=zero relay_lr=5e-5" > "$OUT/fanout-gpu.log" 2>&1 &
wait
{ echo "study done after $(( $(date +%s) - T0 ))s"; nvidia-smi --query-gpu=name,memory.used --format=csv; } >> "$OUT/study.log"
rm -rf "$R"/*/_data
tar czf "$OUT/study.tar.gz" --exclude='*.pt' --exclude='checkpoints' --exclude='*.npz' -C "$R" . 2>>"$OUT/study.log"
tar czf "$OUT/evals.tar.gz" --exclude='checkpoints' --exclude='data' -C "$R" . 2>>"$OUT/study.log"
tail -n 30 "$OUT/smoke.log" "$OUT"/fanout-*.log "$OUT/study.log"

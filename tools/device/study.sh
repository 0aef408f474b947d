#!/usr/bin/env bash
# The Sudoku study on a borrowed GPU machine (issue 9), as one prepared run. Run from the repository root:
#   bash tools/device/study.sh OUT DATA [SECONDS]
# OUT: folder for the results (one tarball + logs); DATA: pre-generated puzzle caches (DATA/default, DATA/gpu, as
# examples/sudoku/fanout.py --data expects); SECONDS: training deadline (default 330; results are assembled after).
# Two fan-outs share the GPU: the default preset (3 seeds, the baseline recipe and the candidate recipes, chosen
# later on the validation puzzles) and the gpu preset (1 seed, larger model, harder puzzles).
set -u
OUT=${1:?OUT}; DATA=${2:?DATA}; DEADLINE=${3:-330}
[ -e relaykit/adapters ] || cp -r adapters relaykit/adapters   # the wheel's layout, without installing
export PYTHONPATH=$PWD:$PWD/examples PYTHONUNBUFFERED=1
RUNS=/tmp/runs; mkdir -p "$RUNS"
( date -u; nvidia-smi --query-gpu=name,memory.used --format=csv ) > "$OUT/env.txt" 2>&1
python3 examples/sudoku/fanout.py --preset default --seeds 0,1,2 --jobs 12 --device cuda --deadline "$DEADLINE" \
  --out "$RUNS/default" --data "$DATA/default" \
  --recipe baseline \
  --recipe "alg1_lr1e4: update=all empty=zero relay_lr=1e-4" \
  --recipe "lr1e4: relay_lr=1e-4" \
  --recipe "zero_lr1e4: empty=zero relay_lr=1e-4" \
  --recipe "policy: train_fraction=0 train_threshold=0.85" \
  --recipe "tied: tied=true" \
  --recipe "tied_alg1: tied=true update=all empty=zero relay_lr=1e-4" > "$OUT/fanout-default.log" 2>&1 &
python3 examples/sudoku/fanout.py --preset gpu --seeds 0 --jobs 4 --device cuda --deadline "$DEADLINE" \
  --out "$RUNS/gpu" --data "$DATA/gpu" \
  --recipe baseline --recipe "alg1_lr: update=all empty=zero relay_lr=5e-5" > "$OUT/fanout-gpu.log" 2>&1 &
wait
( date -u; nvidia-smi --query-gpu=name,memory.used --format=csv ) >> "$OUT/env.txt" 2>&1
tar czf "$OUT/study.tar.gz" --exclude='*.pt' --exclude='checkpoints' -C "$RUNS" .
tail -n 40 "$OUT"/fanout-*.log

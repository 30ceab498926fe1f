#!/usr/bin/env bash
# Pretrain the world model: several recipes side by side on one GPU (or one after another on a CPU), each keeping its
# best checkpoint by held-out accuracy; the shipped weights are the best of these.
#   bash analyses/world_pretrain.sh OUT_DIR MINUTES [DEVICE]
# Each recipe writes OUT_DIR/<name>.safetensors, <name>.safetensors.curve.json and <name>.log.
set -u
out=${1:?OUT_DIR}; minutes=${2:?MINUTES}; device=${3:-cuda}
mkdir -p "$out"
py=${PYTHON:-python3}
run() {  # name, then `world pretrain` flags
  local name=$1; shift
  $py -m alignit_probe.cli world pretrain --out "$out/$name.safetensors" --device "$device" --max-minutes "$minutes" \
    --steps 40000 --log "$out/$name.log" --overwrite "$@" > "$out/$name.stdout" 2>&1
}
if [ "$device" = cpu ]; then
  run a --batch 64 --lr 1e-3 --text-lr 1e-4
else
  run a --batch 256 --lr 1e-3 --text-lr 1e-4 &
  run b --batch 256 --lr 1e-3 --text-lr 0 &
  run c --batch 256 --lr 2e-3 --text-lr 3e-4 &
  run d --batch 256 --lr 1e-3 --text-lr 1e-5 &
  wait
fi
for f in "$out"/*.log; do echo "== $f"; grep -E "^eval|^kept|ms/step" "$f"; done

#!/usr/bin/env bash
# The demo's shipped world data, remade with the project's own commands (2-core CPU: ~1.5 min training, ~4 min
# evaluation):
#   alignit_probe/data/world-textual-inversion/, alignit_probe/data/world-custom-diffusion/  (`world train`, seed 0)
#   alignit_probe/data/world-alignment.json  (`world eval --alignit --samples 200 --seed 0 --json` of each)
# Usage: bash analyses/world_demo_data.sh [OUT]   (OUT defaults to alignit_probe/data; a scratch folder to compare)
set -euo pipefail
cd "$(dirname "$0")/.."
A=${ALIGNIT_PROBE:-.venv/bin/alignit-probe}
PY=${PYTHON:-.venv/bin/python}
OUT=${1:-alignit_probe/data}
mkdir -p "$OUT"
for method in textual-inversion custom-diffusion; do
  $A world train --method "$method" --seed 0 --out "$OUT/world-$method" --overwrite --no-progress
  rm -f "$OUT/world-$method/.alignit-probe"
done
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for method in textual-inversion custom-diffusion; do
  $A world eval --custom "$OUT/world-$method" --concept "<new1>" --class-word triangle --alignit \
    --samples 200 --seed 0 --json --no-progress > "$tmp/$method.json"
done
$PY -m alignit_probe.world.shipped "$tmp" "$OUT/world-alignment.json"

#!/usr/bin/env bash
# The benchmarks at SDXL-base-1.0's shapes (random weights, float16, CUDA) on the offline GPU machine, in one run:
# record vs compute floor (with --summary, a breakdown of one run, and the writer alone), AlignIT vs plain
# generation, attention maps vs plain generation; then the same three at SD1.5's shapes for reference, each only
# while enough of the time budget is left; the tests marked gpu after the SDXL benchmarks; last, SDXL recording at
# 96 prompts while time allows.
#
#   bash benchmarks/gpu_run.sh            # SDXL, then the SD1.5 reference while time allows
#   bash benchmarks/gpu_run.sh sdxl-only  # SDXL only
#
# Run in the project's root; needs .whl/ (../shared/device/fetch_wheels.sh .venv, see ../shared/device/README.md).
# Everything is teed into $OUT/bench.log (./bench.log without $OUT), line by line, so a run cut short leaves its
# output. BENCH_BUDGET_S (default 210) is the wall time the whole script aims to stay under; each benchmark also runs
# under its own `timeout`, so one that hangs cannot take the rest down.
set -uo pipefail
case "${1:-}" in
  "" | sdxl-only) ;;
  *) echo "usage: bash benchmarks/gpu_run.sh [sdxl-only]" >&2; exit 2 ;;
esac
start=$SECONDS
budget=${BENCH_BUDGET_S:-210}
log=${OUT:-.}/bench.log
mkdir -p "$(dirname "$log")" /tmp/bench_record

say() { echo "$*" | tee -a "$log"; }
left() { echo $((budget - (SECONDS - start))); }
bench() {  # bench LIMIT_S SCRIPT ARGS...: one benchmark under `timeout`, its output teed into the log
  local limit=$1
  shift
  say "=== python3 $* (t=$((SECONDS - start)) s, limit ${limit} s)"
  timeout "$limit" python3 "$@" 2>&1 | grep --line-buffered -v '^\[transformers\]' | tee -a "$log"
  say "=== exit ${PIPESTATUS[0]} (t=$((SECONDS - start)) s)"
}
reference() {  # reference MIN_LEFT_S SCRIPT ARGS...: an SD1.5 benchmark, only if MIN_LEFT_S of the budget is left
  local need=$1
  shift
  if [ "$(left)" -ge "$need" ]; then bench "$(left)" "$@"; else say "=== skipped (only $(left) s left): $*"; fi
}

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  2>&1 | tail -n 3 | tee -a "$log"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
say "=== $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1)"
python3 -c 'import torch, diffusers, transformers, zarr; print("=== torch", torch.__version__, "diffusers",
  diffusers.__version__, "transformers", transformers.__version__, "zarr", zarr.__version__)' 2>&1 | tee -a "$log"
say "=== /tmp: $(df -hT /tmp | tail -n 1)"

cuda=(--device cuda --dtype float16)
bench 120 benchmarks/bench_record.py --size sdxl "${cuda[@]}" --prompts 32 --batch-size 16 --store-dtype float16 \
  --repeats 3 --summary --breakdown --writer --out /tmp/bench_record
bench 60 benchmarks/bench_alignit.py --size sdxl "${cuda[@]}" --steps 20 --repeats 3
bench 70 benchmarks/bench_attention.py --size sdxl "${cuda[@]}" --steps 20 --repeats 5

say "=== python3 -m pytest -m gpu (t=$((SECONDS - start)) s)"  # the CUDA-only tests (recording on the device)
timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests 2>&1 | tail -n 5 | tee -a "$log"

if [ "${1:-}" != sdxl-only ]; then
  reference 45 benchmarks/bench_record.py --size sd15 "${cuda[@]}" --prompts 64 --batch-size 32 \
    --store-dtype float16 --repeats 3 --out /tmp/bench_record
  reference 40 benchmarks/bench_alignit.py --size sd15 "${cuda[@]}" --steps 20 --repeats 2
  reference 30 benchmarks/bench_attention.py --size sd15 "${cuda[@]}" --steps 20 --repeats 3
  # SDXL recording at three times the prompts: what the per-run costs weigh at 32 prompts
  reference 60 benchmarks/bench_record.py --size sdxl "${cuda[@]}" --prompts 96 --batch-size 16 \
    --store-dtype float16 --repeats 2 --summary --out /tmp/bench_record
fi
say "=== done in $((SECONDS - start)) s"

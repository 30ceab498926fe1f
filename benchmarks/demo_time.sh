#!/usr/bin/env bash
# Wall time of `alignit-probe demo` (the world demo, defaults) as a user runs it: a fresh process each time, the
# world's pipeline folder already in the cache (the first run writes it, ~2 s). Prints each run and the median.
# Usage: bash benchmarks/demo_time.sh [RUNS=5] [extra demo flags …]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
shift || true
A=${ALIGNIT_PROBE:-.venv/bin/alignit-probe}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
$A demo --out "$out/warm" --samples 1 --steps 1 --no-progress "$@" >/dev/null  # the cache, once
times=()
for i in $(seq "$runs"); do
  t0=$(date +%s.%N)
  $A demo --out "$out/run$i" --no-progress "$@" >/dev/null
  t=$(echo "$(date +%s.%N) - $t0" | bc)
  times+=("$t")
  printf 'run %d: %.1f s\n' "$i" "$t"
done
printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median of %d: %.1f s (min %.1f, max %.1f)\n", NR, (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[1], a[NR]}'

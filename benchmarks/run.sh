#!/usr/bin/env bash
# Reproduce the table in benchmarks/README.md: run every benchmarks/bench_*.py (or the ones named)
# with the project's venv. Each prints its own table with ratios against baselines measured in the
# same run. Output also goes to bench-out/<name>.log.
#
#   benchmarks/run.sh                      # every benchmark, full length (training alone ~1 h on 2 cores)
#   benchmarks/run.sh --quick              # every benchmark with its quick flag (smoke run)
#   benchmarks/run.sh training datasets    # only these (names without bench_ and .py)
#   benchmarks/run.sh --quick capture
#
# A benchmark's quick flag: the arguments on a line `# run.sh --quick: <args>` in the script, else
# `--quick` when the script has that option, else none (it is short already).
set -euo pipefail
cd "$(dirname "$0")/.."
quick=0
names=()
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) names+=("${arg#bench_}") ;;
  esac
done
scripts/setup.sh
if [ ${#names[@]} -eq 0 ]; then
  for f in benchmarks/bench_*.py; do n=$(basename "$f" .py); names+=("${n#bench_}"); done
fi
mkdir -p bench-out
failed=()
for n in "${names[@]}"; do
  f="benchmarks/bench_${n}.py"
  if [ ! -f "$f" ]; then echo "no such benchmark: $f" >&2; failed+=("$n"); continue; fi
  args=()
  if [ "$quick" = 1 ]; then
    line=$(grep -m1 -E '^# run\.sh --quick:' "$f" || true)
    if [ -n "$line" ]; then
      read -r -a args <<< "${line#*--quick:}"
    elif grep -q -- '"--quick"' "$f"; then
      args=(--quick)
    fi
  fi
  echo "=== $f ${args[*]:-}  ($(date -u +%H:%M:%S) UTC, load $(cut -d' ' -f1 /proc/loadavg))"
  if ! .venv/bin/python "$f" "${args[@]}" 2>&1 | tee "bench-out/${n}.log"; then
    failed+=("$n")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi

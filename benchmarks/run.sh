#!/usr/bin/env bash
# Run every benchmark (or the ones named) with the project's venv; each prints its own table
# with ratios against a baseline measured in the same run.
#   benchmarks/run.sh                 # all
#   benchmarks/run.sh capture datasets
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=()
  for f in benchmarks/bench_*.py; do n=$(basename "$f" .py); names+=("${n#bench_}"); done
fi
for n in "${names[@]}"; do
  echo "=== benchmarks/bench_${n}.py"
  .venv/bin/python "benchmarks/bench_${n}.py"
done

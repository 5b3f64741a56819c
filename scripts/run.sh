#!/usr/bin/env bash
# Set up (if needed) and run learnloop on its embedded defaults: the server on a SQLite file in ~/.learnloop.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/learnloop serve "$@"

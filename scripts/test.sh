#!/usr/bin/env bash
# Set up (if needed), lint, and run the whole test suite against SQLite and PostgreSQL.
#
# The suite runs on parallel pytest-xdist workers (TEST_WORKERS, default: one per core, at most 4;
# TEST_WORKERS=0 runs it in this one process). The longest modules come first (tests/conftest.py); each
# worker starts on its share in that order and a worker out of tests takes half of another's queue,
# so modules mostly stay on one worker. The slowest tests are listed at the end.
# Extra arguments go to pytest and win over these defaults (`scripts/test.sh -n 0 tests/test_x.py`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
cores=$(nproc 2>/dev/null || echo 2)
workers=${TEST_WORKERS:-$((cores < 4 ? cores : 4))}
exec .venv/bin/python -m pytest -n "$workers" --dist worksteal --durations=25 "$@"

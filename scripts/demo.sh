#!/usr/bin/env bash
# Set up (if needed), then show the whole loop make SmolLM2-135M better at a task, unattended.
# `scripts/demo.sh --quick` runs the same flow on the tiny test model in under a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/learnloop demo "$@"

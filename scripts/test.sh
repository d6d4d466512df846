#!/usr/bin/env bash
# Set up (system packages, venv with test extras, model) and run the whole test suite.
# Extra arguments go to pytest, e.g. scripts/test.sh -k acl
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec "${EMQ_VENV:-.venv}/bin/python" -m pytest "$@"

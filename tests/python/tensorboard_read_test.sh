#!/bin/bash
# Runs tensorboard_read_test.py with the project venv's Python (which has the real tensorboard package).
#   tensorboard_read_test.sh <tensorboard_read_test.py> <tensorboard_write_scalars binary>
set -euo pipefail
: "${HYBRIDMOE_VENV:?HYBRIDMOE_VENV is not set; tools/setup.sh writes it into .bazelrc.local}"
exec "$HYBRIDMOE_VENV/bin/python" "$1" --writer "$2" --tmp "${TEST_TMPDIR:-$(mktemp -d)}"

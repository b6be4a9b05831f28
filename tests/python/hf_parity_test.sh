#!/bin/bash
# Runs hf_parity_test.py with the project venv's Python (which has the real transformers package).
#   hf_parity_test.sh <hf_parity_test.py> <convert_hf binary> <eval binary>
set -euo pipefail
: "${HYBRIDMOE_VENV:?HYBRIDMOE_VENV is not set; tools/setup.sh writes it into .bazelrc.local}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
export HF_HOME="$tmp/hf_home"
exec "$HYBRIDMOE_VENV/bin/python" "$1" --convert_hf="$2" --eval="$3" --tmp="$tmp"

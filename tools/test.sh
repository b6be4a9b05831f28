#!/usr/bin/env bash
# Sets up (idempotent), builds and runs every test; ends with "N passed, N failed".
# Extra arguments go to `bazel test` (e.g. a narrower target pattern: tools/test.sh //tests/core/...).
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || { echo "0 passed, 1 failed"; exit 1; }
targets=("$@")
((${#targets[@]})) || targets=(//...)
log="$(mktemp)"
bazel test --test_summary=short "${targets[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
passed=$(grep -cE '^//[^ ]+ +(\(cached\) )?PASSED' "$log")
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD)' "$log")
if [[ $rc != 0 && $failed == 0 ]]; then
  failed=1  # the build itself failed before tests could run
fi
rm -f "$log"
echo "$passed passed, $failed failed"
exit $rc

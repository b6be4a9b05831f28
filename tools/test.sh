#!/usr/bin/env bash
# Sets up (idempotent), builds and runs every test; ends with "N passed, N failed, N skipped".
# Extra arguments go to `bazel test` (e.g. a narrower target pattern: tools/test.sh //tests/core/...).
# A test counts as skipped, not passed, when Bazel skipped it as incompatible with the configuration
# (target_compatible_with, e.g. the NCCL tests without --config=cuda) or when it ran and its test.xml
# reports every test case skipped (gtest's GTEST_SKIP writes result="skipped"; a shell test that skips can
# write such a JUnit XML to $XML_OUTPUT_FILE).
set -uo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh || { echo "0 passed, 1 failed, 0 skipped"; exit 1; }
targets=("$@")
((${#targets[@]})) || targets=(//...)
log="$(mktemp)"
bazel test --test_summary=short "${targets[@]}" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}

# Whether every test case in a passed target's XML report was skipped (false when there is no report or it
# holds no test case, as in Bazel's generated XML for a shell test that wrote none).
all_skipped() {
  local xml="bazel-testlogs/${1#//}"
  xml="${xml/://}/test.xml"
  [[ -f "$xml" ]] && grep -q 'result="skipped"' "$xml" && ! grep -qE 'result="(completed|suppressed)"' "$xml"
}
passed=0
skipped=$(grep -cE '^//[^ ]+ +SKIPPED' "$log")
while read -r target; do
  if all_skipped "$target"; then
    skipped=$((skipped + 1))
    echo "test.sh: $target ran but skipped every test case (counted as skipped)"
  else
    passed=$((passed + 1))
  fi
done < <(grep -E '^//[^ ]+ +(\(cached\) )?PASSED' "$log" | awk '{print $1}')
failed=$(grep -cE '^//[^ ]+ +(\(cached\) )?(FAILED|TIMEOUT|NO STATUS|FLAKY|INCOMPLETE|REMOTE FAILURE|FAILED TO BUILD)' "$log")
if [[ $rc != 0 && $failed == 0 ]]; then
  failed=1  # the build itself failed before tests could run
fi
rm -f "$log"
echo "$passed passed, $failed failed, $skipped skipped"
exit $rc

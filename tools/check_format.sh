#!/usr/bin/env bash
# Checks that the C++ sources follow .clang-format: runs `clang-format --dry-run -Werror` on every tracked
# *.cc / *.h file (git ls-files), or on the files given as arguments, and lists the files that differ.
# Changes nothing. Exit status: 0 all clean, 1 some file differs, 2 clang-format or git missing.
#
#   tools/check_format.sh                 # every tracked .cc/.h
#   tools/check_format.sh core/norm.cc    # just these
#   VERBOSE=1 tools/check_format.sh       # also clang-format's own report of each difference
#   CLANG_FORMAT=clang-format-14 tools/check_format.sh
#
# To fix a file: clang-format -i FILE (the style file is found from the file's directory upwards).
set -uo pipefail
args=()
for a in "$@"; do
  [[ "$a" = /* ]] && args+=("$a") || args+=("$PWD/$a")  # arguments are relative to the caller's directory
done
cd "$(dirname "$0")/.."

clang_format="${CLANG_FORMAT:-clang-format}"
if ! command -v "$clang_format" >/dev/null 2>&1; then
  echo "check_format.sh: $clang_format not found (Debian: apt-get install clang-format; or set CLANG_FORMAT)" >&2
  exit 2
fi
if [[ ! -f .clang-format ]]; then
  echo "check_format.sh: no .clang-format at the repository root" >&2
  exit 2
fi

files=()
if ((${#args[@]})); then
  files=("${args[@]}")
else
  if ! git rev-parse --git-dir >/dev/null 2>&1; then
    echo "check_format.sh: not a git checkout; pass the files to check as arguments" >&2
    exit 2
  fi
  while IFS= read -r -d '' f; do
    [[ -f "$f" ]] && files+=("$f")  # tracked but deleted in the work tree: nothing to check
  done < <(git ls-files -z -- '*.cc' '*.h')
fi

differ=()
for f in "${files[@]}"; do
  if [[ ! -f "$f" ]]; then
    echo "check_format.sh: $f: no such file" >&2
    exit 2
  fi
  if ! report="$("$clang_format" --style=file --dry-run -Werror "$f" 2>&1)"; then
    differ+=("$f")
    [[ -n "${VERBOSE:-}" ]] && printf '%s\n' "$report"
  fi
done

if ((${#differ[@]})); then
  printf '%s\n' "${differ[@]}"
  echo "check_format.sh: ${#differ[@]} of ${#files[@]} files differ from .clang-format ($("$clang_format" --version))"
  exit 1
fi
echo "check_format.sh: ${#files[@]} files follow .clang-format"

#!/usr/bin/env bash
# Builds the --config=cuda binaries and packs them, with every non-torch shared library they need, the configs
# and the corpus, into one folder for a GPU machine (issue 13), then checks what it packed.
#
#   tools/gpu/bundle.sh            # build + pack into gpu_bundle/ (repo root) + verify
#   tools/gpu/bundle.sh --verify   # only verify an existing bundle (repeatable by any later session)
#   tools/gpu/bundle.sh --no-build # pack from the last --config=cuda build, then verify
#   tools/gpu/bundle.sh --out=DIR  # another folder than gpu_bundle/
#
# The bundle (at most 60 MiB; the device tool carries 64 MiB in all):
#   bin/NAME        wrapper scripts: source env.sh, exec libexec/NAME
#   libexec/NAME    the ELF binaries (train, eval, bench, plan, linkage_test, cuda_device_test,
#                   models_device_test, parallel_device_test), RUNPATH $ORIGIN/../lib
#   lib/            every library they need except the torch wheel's (torch/lib and the nvidia-* wheels beside
#                   it: libcudart, libnccl, cuBLAS, ... come from the GPU machine's own python3 torch 2.11.0+cu130)
#                   and glibc's (libc, libm, libdl, libpthread, librt, ld-linux): protobuf, abseil, OpenMPI and its
#                   dependencies, libstdc++ and libgcc_s (the GPU machine's may be older), Bazel's test .so files
#   env.sh          sets LD_LIBRARY_PATH = lib/ : $HYBRIDMOE_TORCH_LIB : <site-packages>/nvidia/*/lib, where
#                   HYBRIDMOE_TORCH_LIB defaults to `python3 -c 'import torch,os;print(os.path.dirname(torch.__file__))'`/lib
#   configs/, data/corpus/  what check.sh runs (paths in the configs are relative to the bundle root)
#   check.sh        tools/gpu/check.sh, run there from inside the bundle
#   MANIFEST.txt    commit, date, sizes, the newest glibc symbol version the binaries need, sha256 of each file
#
# The train/eval/bench binaries run as one process without any launcher: ParallelContext::Create calls MPI_Init
# only under mpirun/srun/PMI (parallel/topology.cc DetectLaunch), so no orted or OpenMPI plugins are bundled;
# libmpi and its libraries are there only because the binaries link them.
#
# --verify (run after every pack, or alone) copies the bundle to a fresh folder under /tmp (so nothing can
# resolve from the repository), then in a clean environment (env -i PATH=/usr/bin:/bin HOME=/tmp, the torch lib
# folder given by HYBRIDMOE_TORCH_LIB):
#   1. size <= 60 MiB;
#   2. ldd of every bundled ELF: every library resolves, inside the bundle's lib/ or the torch wheel's folders
#      (torch/lib, site-packages/nvidia/*/lib), or is one of glibc's; one libcudart, one libnccl (printed);
#   3. runs from the copy on the CPU: plan (OLMoE-1B-7B), linkage_test on the bundle's own train, the device
#      tests (which skip or pass without a GPU), train for a few steps of configs/tiny.textproto with
#      parallel.device CPU, eval of nothing (its --help) and bench --help;
#   4. check.sh --cpu-dry-run: every part of the GPU check, on the CPU with tiny step counts.
#
# Environment: BAZEL (default bazel); CUDA_OUTPUT_BASE (default ~/.cache/bazel-cuda-ob: a Bazel output base of its
# own, so that the --define=cuda=true build does not replace the CPU build's outputs in the shared one);
# HYBRIDMOE_TORCH_LIB (default: LIBTORCH_HOME of .bazelrc.local + /lib, the torch we linked against).
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"

out="$repo/gpu_bundle"
mode=build
for a in "$@"; do
  case "$a" in
    --verify) mode=verify ;;
    --no-build) mode=pack ;;
    --out=*) out="${a#--out=}" ;;
    -h | --help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "bundle.sh: unknown argument '$a' (valid: --verify, --no-build, --out=DIR, --help)" >&2; exit 2 ;;
  esac
done
[[ "$out" = /* ]] || out="$repo/$out"

BAZEL="${BAZEL:-bazel}"
CUDA_OUTPUT_BASE="${CUDA_OUTPUT_BASE:-$HOME/.cache/bazel-cuda-ob}"
MAX_BYTES=$((60 * 1024 * 1024))
log() { echo "[bundle] $*" >&2; }
die() { echo "bundle.sh: $*" >&2; exit 1; }

torch_home() {
  local h="${LIBTORCH_HOME:-}"
  [[ -z "$h" && -f .bazelrc.local ]] && h="$(sed -n 's/.*--repo_env=LIBTORCH_HOME=//p' .bazelrc.local | tail -1)"
  [[ -n "$h" && -f "$h/lib/libtorch_cpu.so" ]] || die "no LibTorch found (LIBTORCH_HOME or .bazelrc.local; run tools/setup.sh)"
  echo "$h"
}
TORCH_LIB="${HYBRIDMOE_TORCH_LIB:-$(torch_home)/lib}"
[[ -f "$TORCH_LIB/libtorch_cuda.so" ]] || die "HYBRIDMOE_TORCH_LIB=$TORCH_LIB has no libtorch_cuda.so (a CUDA torch is needed)"
SITE="$(cd "$TORCH_LIB/../.." && pwd)"  # site-packages: torch/ and nvidia/ side by side

# Binaries: bundle name -> Bazel label.
NAMES=(train eval bench plan linkage_test cuda_device_test models_device_test parallel_device_test)
declare -A LABEL=(
  [train]=//tools:train [eval]=//tools:eval [bench]=//tools:bench [plan]=//tools:plan
  [linkage_test]=//tests/gpu:linkage_test [cuda_device_test]=//tests/gpu:cuda_device_test
  [models_device_test]=//tests/models:device_test [parallel_device_test]=//tests/parallel:device_test
)
# glibc: every Debian/Ubuntu has these, and they must match the GPU machine's own ld.so.
GLIBC_RE='^(ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libresolv\.so\.2|libutil\.so\.1|libmvec\.so\.1|linux-vdso\.so\.1)$'

# A library the torch wheel family provides (torch/lib or site-packages/nvidia/*/lib): the GPU machine has it.
torch_provides() {
  local soname="$1" d
  [[ -e "$TORCH_LIB/$soname" ]] && return 0
  for d in "$SITE"/nvidia/*/lib; do [[ -e "$d/$soname" ]] && return 0; done
  return 1
}

bazel_cuda() { "$BAZEL" --output_base="$CUDA_OUTPUT_BASE" "$@"; }

build() {
  local labels=()
  for n in "${NAMES[@]}"; do labels+=("${LABEL[$n]}"); done
  log "bazel --output_base=$CUDA_OUTPUT_BASE build --config=cuda ${labels[*]}"
  # --symlink_prefix=/: no bazel-bin/... links, so the checkout's links keep pointing at the CPU build.
  bazel_cuda build --config=cuda --symlink_prefix=/ "${labels[@]}" || die "the --config=cuda build failed"
}

pack() {
  local bin_dir
  bin_dir="$(bazel_cuda info --config=cuda bazel-bin 2>/dev/null)" || die "bazel info failed for $CUDA_OUTPUT_BASE"
  command -v patchelf >/dev/null || die "patchelf is needed (Debian: apt-get install patchelf)"
  local staging="$out.new" origins=()
  rm -rf "$staging"
  mkdir -p "$staging"/{bin,libexec,lib,configs,data/corpus} || die "cannot create $staging"
  for n in "${NAMES[@]}"; do
    local label="${LABEL[$n]}" path
    path="$bin_dir/$(echo "${label#//}" | tr ':' '/')"
    [[ -x "$path" ]] || die "$label: $path missing (build first: tools/gpu/bundle.sh without --no-build)"
    cp "$path" "$staging/libexec/$n"
    chmod u+w "$staging/libexec/$n"
    origins+=("$path")
  done
  # The libraries: every ldd-resolved dependency of the binaries that is neither glibc nor the torch wheels'.
  # ldd runs on the binaries where Bazel built them: tests find their _solib_k8 libraries through $ORIGIN.
  declare -A seen=()
  local f soname target
  for f in "${origins[@]}"; do
    while read -r soname target; do
      [[ -n "$soname" ]] || continue
      [[ "$target" == "not found" ]] && die "$(basename "$f"): $soname not found at build time"
      [[ "$soname" =~ $GLIBC_RE ]] && continue
      torch_provides "$soname" && continue
      [[ -n "${seen[$soname]:-}" ]] && continue
      seen[$soname]="$target"
    done < <(ldd "$f" | awk '$2 == "=>" {print $1, ($3 == "not" ? "not found" : $3)}')
  done
  for soname in "${!seen[@]}"; do
    cp -L "${seen[$soname]}" "$staging/lib/$soname" || die "cannot copy ${seen[$soname]}"
    chmod u+w "$staging/lib/$soname"
  done
  # RUNPATHs: the build machine's folders out, the bundle's in (torch comes through LD_LIBRARY_PATH).
  for f in "$staging"/libexec/*; do patchelf --set-rpath '$ORIGIN/../lib' "$f" || die "patchelf $f"; done
  for f in "$staging"/lib/*; do patchelf --set-rpath '$ORIGIN' "$f" || die "patchelf $f"; done
  # Debug sections are not needed to run (symbols stay for backtraces).
  strip --strip-debug "$staging"/libexec/* "$staging"/lib/* 2>/dev/null || true

  cp configs/tiny.textproto configs/bench.textproto configs/olmoe_1b7b*.textproto "$staging/configs/"
  [[ -f data/corpus/train.bin && -f data/corpus/val.bin ]] || die "data/corpus missing (run tools/setup.sh)"
  cp data/corpus/train.bin data/corpus/val.bin data/corpus/manifest.json "$staging/data/corpus/"
  cp tools/gpu/check.sh tools/gpu/check.py "$staging/"
  chmod +x "$staging/check.sh"

  cat >"$staging/env.sh" <<'EOF'
# Sourced by bin/*: the bundle's libraries first, then the torch wheel's (torch/lib and nvidia/*/lib beside it).
# HYBRIDMOE_TORCH_LIB: the lib/ folder of a CUDA torch 2.11 (default: python3's torch).
HYBRIDMOE_BUNDLE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export HYBRIDMOE_BUNDLE
if [[ -z "${HYBRIDMOE_TORCH_LIB:-}" ]]; then
  HYBRIDMOE_TORCH_LIB="$(python3 -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))' 2>/dev/null)"
fi
if [[ ! -f "$HYBRIDMOE_TORCH_LIB/libtorch_cuda.so" ]]; then
  echo "gpu_bundle: no libtorch_cuda.so in '$HYBRIDMOE_TORCH_LIB': set HYBRIDMOE_TORCH_LIB to a CUDA torch 2.11's lib folder" >&2
  return 1
fi
export HYBRIDMOE_TORCH_LIB
_hm_path="$HYBRIDMOE_BUNDLE/lib:$HYBRIDMOE_TORCH_LIB"
for _hm_d in "$HYBRIDMOE_TORCH_LIB"/../../nvidia/*/lib; do
  [[ -d "$_hm_d" ]] && _hm_path="$_hm_path:$(cd "$_hm_d" && pwd)"
done
export LD_LIBRARY_PATH="$_hm_path${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _hm_path _hm_d
EOF
  for n in "${NAMES[@]}"; do
    cat >"$staging/bin/$n" <<EOF
#!/usr/bin/env bash
. "\$(dirname "\$(readlink -f "\${BASH_SOURCE[0]}")")/../env.sh" || exit 1
exec "\$HYBRIDMOE_BUNDLE/libexec/$n" "\$@"
EOF
    chmod +x "$staging/bin/$n"
  done

  # The newest glibc symbol version anything bundled needs (the GPU machine's glibc must be at least that).
  local glibc
  glibc="$(for f in "$staging"/libexec/* "$staging"/lib/*; do objdump -T "$f" 2>/dev/null; done |
    grep -o 'GLIBC_[0-9.]*' | sort -u -V | tail -1)"
  {
    echo "HybridMoE GPU bundle"
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (work tree differs from it)')"
    echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-?}"), glibc $(ldd --version | head -1 | awk '{print $NF}')"
    echo "linked against torch $(cat "$TORCH_LIB/../version.py" 2>/dev/null | sed -n "s/^__version__ = '\(.*\)'/\1/p") at $TORCH_LIB"
    echo "needs glibc >= ${glibc#GLIBC_}"
    echo "bundled libraries: $(ls "$staging/lib" | tr '\n' ' ')"
    echo
    (cd "$staging" && find . -type f ! -name MANIFEST.txt -printf '%P\n' | sort | xargs sha256sum)
  } >"$staging/MANIFEST.txt"

  rm -rf "$out"
  mv "$staging" "$out" || die "cannot move $staging to $out"
  log "packed $out: $(du -sh "$out" | cut -f1), ${#seen[@]} bundled libraries, needs ${glibc}"
}

verify() {
  [[ -x "$out/bin/train" && -f "$out/MANIFEST.txt" ]] || die "$out is not a bundle (run tools/gpu/bundle.sh first)"
  local fails=0 size
  fail() { echo "verify: FAIL: $*"; fails=$((fails + 1)); }
  size=$(du -sb "$out" | cut -f1)
  echo "verify: size $size bytes ($(awk -v s="$size" 'BEGIN{printf "%.1f", s/1048576}') MiB, limit 60 MiB)"
  ((size <= MAX_BYTES)) || fail "bundle is larger than 60 MiB"

  local tmp copy
  tmp="$(mktemp -d /tmp/hybridmoe-bundle-verify.XXXXXX)"
  copy="$tmp/gpu_bundle"
  cp -a "$out" "$copy"
  echo "verify: copy at $copy; torch libraries from $TORCH_LIB"
  # The clean environment of every check below.
  local clean=(env -i PATH=/usr/bin:/bin HOME=/tmp HYBRIDMOE_TORCH_LIB="$TORCH_LIB")

  # 2. ldd of every ELF, with exactly the LD_LIBRARY_PATH the wrappers set.
  local ldpath
  ldpath="$("${clean[@]}" bash -c ". '$copy/env.sh' && echo \$LD_LIBRARY_PATH")" || fail "env.sh failed"
  local torch_real site_real f
  torch_real="$(readlink -f "$TORCH_LIB")"
  site_real="$(readlink -f "$SITE")"
  printf 'verify: %-28s %5s %7s %7s %7s  %s\n' "ldd of" "libs" "bundle" "torch" "glibc" "result"
  for f in "$copy"/libexec/* "$copy"/lib/*; do
    local report n=0 nb=0 nt=0 ng=0 bad=() cudart=() nccl=() soname target real
    report="$("${clean[@]}" LD_LIBRARY_PATH="$ldpath" ldd "$f" 2>&1)"
    while read -r soname target; do
      [[ -n "$soname" ]] || continue
      n=$((n + 1))
      if [[ "$target" == "not" ]]; then bad+=("$soname:not-found"); continue; fi
      real="$(readlink -f "$target")"
      [[ "$soname" == libcudart.so* ]] && cudart+=("${real#"$site_real"/}")
      [[ "$soname" == libnccl.so* ]] && nccl+=("${real#"$site_real"/}")
      if [[ "$real" == "$copy"/lib/* ]]; then nb=$((nb + 1))
      elif [[ "$real" == "$torch_real"/* || "$real" == "$site_real"/nvidia/* ]]; then nt=$((nt + 1))
      elif [[ "$soname" =~ $GLIBC_RE ]]; then ng=$((ng + 1))
      else bad+=("$soname=>$target"); fi
    done < <(echo "$report" | awk '$2 == "=>" {print $1, $3}')
    ((${#cudart[@]} <= 1)) || bad+=("libcudart-resolved-${#cudart[@]}-times")
    ((${#nccl[@]} <= 1)) || bad+=("libnccl-resolved-${#nccl[@]}-times")
    local what="${f#"$copy"/}"
    if ((${#bad[@]})); then
      fail "$what: ${bad[*]}"
    elif [[ "$what" == libexec/* ]]; then
      printf 'verify: %-28s %5d %7d %7d %7d  ok%s\n' "$what" "$n" "$nb" "$nt" "$ng" \
        "${cudart:+; libcudart ${cudart[*]}}${nccl:+; libnccl ${nccl[*]}}"
    fi
  done
  echo "verify: every bundled library (lib/*, $(ls "$copy/lib" | wc -l) files) resolves inside the bundle, the torch wheel or glibc: $( ((fails == 0)) && echo yes || echo NO)"
  if grep -rq --binary-files=text "$repo/" "$copy/lib" "$copy/libexec"; then
    echo "verify: note: some bundled file contains the string $repo/ (a build-time path, not a search path)"
  fi

  # 3. Runs from the copy, on the CPU, in the clean environment.
  run() {  # run NAME COMMAND...: one check, its output in $tmp/NAME.log
    local name="$1"
    shift
    local t0=$SECONDS
    if (cd "$copy" && "${clean[@]}" timeout 600 "$@") >"$tmp/$name.log" 2>&1; then
      echo "verify: $name ok ($((SECONDS - t0)) s)"
    else
      fail "$name (exit $?, $((SECONDS - t0)) s); last lines of $tmp/$name.log:"
      tail -n 15 "$tmp/$name.log" | sed 's/^/    /'
    fi
  }
  run plan bin/plan --config=configs/olmoe_1b7b.textproto
  grep -q '6,919,161,856' "$tmp/plan.log" && echo "verify: plan: OLMoE-1B-7B has 6,919,161,856 parameters" ||
    fail "plan did not report 6,919,161,856 parameters"
  run linkage_test bin/linkage_test "$copy/libexec/train"
  grep -E '^(libcudart loaded|NCCL runtime|.*: [0-9]+ libraries;)' "$tmp/linkage_test.log" | sed 's/^/verify:   /'
  run cuda_device_test bin/cuda_device_test
  run models_device_test bin/models_device_test
  run parallel_device_test bin/parallel_device_test
  run train bin/train --config=configs/tiny.textproto --out_dir="$tmp/tiny" \
    --override='parallel { device: CPU } train { steps: 5 eval_interval: 0 eval_batches: 1 } logging { log_interval: 1 } checkpoint { save_final: false }'
  if [[ -f "$tmp/tiny/metrics.jsonl" ]]; then
    echo "verify: train losses steps 1-5: $(grep '"kind": "train"' "$tmp/tiny/metrics.jsonl" | sed -n 's/.*"loss": \([0-9.e+-]*\).*/\1/p' | tr '\n' ' ')"
  else
    fail "train wrote no metrics.jsonl"
  fi
  run eval_help bin/eval --help
  run bench_help bin/bench --help
  # 4. The GPU check's own parts, on the CPU. Its exit status is not the verdict here (a part may fail on the
  # CPU for a reason of its own, e.g. BF16 where the CPU path lacks it): every part must have run to a status,
  # none may have hit an error of check.py itself, and the env/units/tiny_cpu/olmoe parts must pass.
  local t0=$SECONDS
  # python3 for the peak part: the venv's beside the torch we linked (/usr/bin/python3 may have no torch).
  local py=/usr/bin/python3
  [[ -x "$SITE/../../../bin/python3" ]] && py="$(readlink -f "$SITE/../../../bin")/python3"
  (cd "$copy" && "${clean[@]}" PYTHON="$py" timeout 1800 bash check.sh --cpu-dry-run "$tmp/check") >"$tmp/check_dry_run.log" 2>&1
  echo "verify: check.sh --cpu-dry-run exited $? after $((SECONDS - t0)) s; its summary:"
  sed -n '/^=== summary/,/^all ok/p' "$tmp/check_dry_run.log" | sed 's/^/verify:   /'
  if ! /usr/bin/python3 - "$tmp/check/gpu_check.json" <<'PY'; then
import json, sys
r = json.load(open(sys.argv[1]))
p = r["parts"]
want = ["env", "units", "peak", "tiny_cpu", "tiny_cuda_fp32", "tiny_cuda_bf16", "bench_fp32", "bench_bf16", "olmoe"]
bad = [k for k in want if k not in p]
bad += [k for k, v in p.items() if "check.py error" in str(v.get("reason", ""))]
bad += [k for k in ("env", "units", "tiny_cpu", "tiny_cuda_fp32", "olmoe") if p.get(k, {}).get("status") != "ok"]
if bad:
    print("verify: check.sh --cpu-dry-run: parts missing, broken or failed: " + ", ".join(sorted(set(bad))))
    sys.exit(1)
PY
    fail "check.sh --cpu-dry-run (log $tmp/check_dry_run.log)"
  fi

  if ((fails)); then
    echo "verify: $fails check(s) FAILED (logs in $tmp)"
    return 1
  fi
  echo "verify: all checks passed (logs in $tmp)"
  rm -rf "$tmp/tiny"
}

case "$mode" in
  build) build && pack && verify ;;
  pack) pack && verify ;;
  verify) verify ;;
esac

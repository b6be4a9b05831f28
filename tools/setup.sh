#!/usr/bin/env bash
# One-time (idempotent) set-up of everything HybridMoE needs on Debian 12:
#   * Debian packages: Bazel 4.2.3 + offline rules, protobuf, abseil, GoogleTest, OpenMPI, JSON,
#     text packages for the bundled corpus, Python venv support;
#   * a Python venv with a pinned PyPI `torch` wheel (its torch/include + torch/lib are our LibTorch)
#     and the test-only packages (transformers, safetensors, tensorboard, numpy);
#   * the bundled English byte corpus (data/corpus/{train,val}.bin), see tools/make_corpus.py.
# A second run with everything present takes a few seconds. Environment knobs:
#   HYBRIDMOE_HOME  cache directory for the venv (default ~/.cache/hybridmoe)
#   LIBTORCH_HOME   use an existing LibTorch (a directory with include/ and lib/) instead of the wheel's
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION=2.11.0
TRANSFORMERS_VERSION=4.57.1
SAFETENSORS_VERSION=0.6.2
TENSORBOARD_VERSION=2.20.0
NUMPY_VERSION=2.3.4
HYBRIDMOE_HOME="${HYBRIDMOE_HOME:-$HOME/.cache/hybridmoe}"
VENV="$HYBRIDMOE_HOME/venv"

log() { echo "[setup] $*" >&2; }

APT_PACKAGES=(
  bazel-bootstrap bazel-rules-java bazel-rules-proto bazel-platforms bazel-skylib
  protobuf-compiler libprotobuf-dev libabsl-dev libgtest-dev nlohmann-json3-dev
  openmpi-bin libopenmpi-dev
  fortunes fortunes-min dict-jargon dict-devil
  python3 python3-venv
  chromium slurm-wlm munge
  clang-format
  strace  # tests/tools:checkpoint_mpi_test counts each rank's reads of the checkpoint files
  patchelf  # tools/gpu/bundle.sh: the bundled binaries find their libraries through $ORIGIN
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) != 0 ]] && SUDO=sudo
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

stamp="$VENV/.hybridmoe-$TORCH_VERSION-$TRANSFORMERS_VERSION-$SAFETENSORS_VERSION-$TENSORBOARD_VERSION"
if [[ ! -f "$stamp" ]]; then
  log "creating Python venv at $VENV (torch==$TORCH_VERSION from PyPI; ~4 GB with its CUDA runtime wheels)"
  rm -rf "$VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "torch==$TORCH_VERSION" "transformers==$TRANSFORMERS_VERSION" "safetensors==$SAFETENSORS_VERSION" \
    "tensorboard==$TENSORBOARD_VERSION" "numpy==$NUMPY_VERSION"
  "$VENV/bin/python" -c "import torch; assert torch.compiled_with_cxx11_abi(), 'torch wheel must use the C++11 ABI'"
  touch "$stamp"
fi

# Bazel finds LibTorch through LIBTORCH_HOME (third_party/torch/libtorch.bzl); remember the choice so
# that later `bazel` invocations without the variable still see the same LibTorch.
libtorch="${LIBTORCH_HOME:-$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))')}"
[[ -f "$libtorch/lib/libtorch_cpu.so" && -d "$libtorch/include/torch" ]] || {
  echo "setup: LIBTORCH_HOME=$libtorch has no lib/libtorch_cpu.so or include/torch; point it at a LibTorch directory" >&2
  exit 1
}
echo "build --repo_env=LIBTORCH_HOME=$libtorch" > .bazelrc.local.new
echo "build --test_env=HYBRIDMOE_VENV=$VENV" >> .bazelrc.local.new
cmp -s .bazelrc.local.new .bazelrc.local 2>/dev/null && rm .bazelrc.local.new || mv .bazelrc.local.new .bazelrc.local

if [[ ! -f data/corpus/train.bin || ! -f data/corpus/val.bin || tools/make_corpus.py -nt data/corpus/train.bin ]]; then
  log "assembling the bundled English corpus"
  "$VENV/bin/python" tools/make_corpus.py --out data/corpus
fi
log "ready (LibTorch: $libtorch)"

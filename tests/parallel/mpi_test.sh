#!/bin/bash
# Runs a program on several MPI ranks under `bazel test`:   mpi_test.sh <nprocs> <binary> [args...]
# Fails if mpirun fails or runs past MPI_TEST_TIMEOUT seconds (default 240).
set -euo pipefail

if [[ "${1:-}" == "--rank-wrapper" ]]; then
  # Run by mpirun once per rank. Only rank 0 may touch Bazel's per-test files (the XML report and the
  # premature-exit marker); otherwise every rank's gtest writes and deletes the same files.
  shift
  if [[ "${OMPI_COMM_WORLD_RANK:-0}" != 0 ]]; then
    unset TEST_PREMATURE_EXIT_FILE XML_OUTPUT_FILE
  fi
  exec "$@"
fi

np="$1"; shift
bin="$1"; shift
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# OpenMPI's session directory and shared-memory segments inside this test's private tmp dir: sandboxed
# tests share a PID namespace layout, so two concurrent mpiruns could otherwise pick the same segment names.
export TMPDIR="${TEST_TMPDIR:-${TMPDIR:-/tmp}}"
export OMPI_MCA_btl_vader_backing_directory="$TMPDIR"
# One intra-op thread per rank: the ranks already oversubscribe the CI machine's cores.
export OMP_NUM_THREADS=1
exec timeout -k 10 "${MPI_TEST_TIMEOUT:-240}" \
  mpirun --oversubscribe -np "$np" "$0" --rank-wrapper "$bin" "$@"

// main() for GoogleTest binaries run by mpirun (see mpi_test.sh): initialises MPI (serialized threads),
// runs the tests on every rank, prints the full report on rank 0 and only failures (tagged with the rank)
// elsewhere, and exits with the worst result over all ranks.
#pragma once

#include <string>

namespace hybridmoe {

// Value of a `--name=value` argument left over after GoogleTest's own flags, or `fallback`.
int IntTestFlag(const std::string& name, int fallback);
int WorldRank();
int WorldSize();

}  // namespace hybridmoe

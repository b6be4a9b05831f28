// What a process learns about, and asks of, the host it runs on: the CPUs it may use and how freed memory is
// kept.
#pragma once

namespace hybridmoe {

// CPUs in this process's affinity mask (a Slurm/cgroup allocation, taskset), not every CPU of the machine;
// std::thread::hardware_concurrency() when the mask cannot be read. At least 1.
int CpusAllowed();

// A training step frees and allocates the same large buffers every step (activations, gradients, 1-32 MiB
// each at the bench sizes). glibc returns blocks above its (adaptive) mmap threshold to the kernel on free,
// so each step pays page faults and page zeroing again: 1.43M page faults in a 1-rank bench run. This raises
// the mmap threshold to glibc's maximum (32 MiB) and the trim threshold to 1 GiB, so freed blocks are kept
// and reused: 0.83-0.87M page faults and a 4-7 % shorter step on the bench preset (docs/benchmarks.md).
// Peak resident memory is the step's peak either way. Call first thing in main(), before any allocation
// worth keeping. HYBRIDMOE_MALLOC_RELEASE=1 in the environment keeps glibc's defaults. Returns whether the
// settings were applied.
bool KeepFreedMemoryForReuse();

// The same policy for a child process that is not ours (the transformers side of tools/bench), as the
// GLIBC_TUNABLES value glibc reads at start-up.
const char* KeepFreedMemoryTunables();

}  // namespace hybridmoe

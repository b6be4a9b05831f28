// What a process learns about the host it runs on.
#pragma once

namespace hybridmoe {

// CPUs in this process's affinity mask (a Slurm/cgroup allocation, taskset), not every CPU of the machine;
// std::thread::hardware_concurrency() when the mask cannot be read. At least 1.
int CpusAllowed();

}  // namespace hybridmoe

#include "core/host.h"

#include <malloc.h>
#include <sched.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace hybridmoe {

int CpusAllowed() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

namespace {
constexpr int kMmapThreshold = 32 << 20;  // glibc's upper limit on 64-bit (4 MiB * sizeof(long))
constexpr int kTrimThreshold = 1 << 30;   // trim the heap top only when more than 1 GiB of it is free
}  // namespace

bool KeepFreedMemoryForReuse() {
  if (const char* v = std::getenv("HYBRIDMOE_MALLOC_RELEASE"); v != nullptr && std::strcmp(v, "1") == 0) return false;
  return mallopt(M_MMAP_THRESHOLD, kMmapThreshold) == 1 && mallopt(M_TRIM_THRESHOLD, kTrimThreshold) == 1;
}

const char* KeepFreedMemoryTunables() {
  static_assert(kMmapThreshold == 33554432 && kTrimThreshold == 1073741824, "keep the string below in step");
  return "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824";
}

}  // namespace hybridmoe

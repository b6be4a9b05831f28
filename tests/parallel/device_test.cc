// parallel/device.h: the device of a rank as a pure function, and its errors.
#include "parallel/device.h"

#include <gtest/gtest.h>

namespace hybridmoe {
namespace {

TEST(ChooseDeviceTest, CpuIgnoresGpus) {
  for (int gpus : {0, 1, 8}) {
    auto d = ChooseDevice(ParallelConfig::CPU, 3, 4, gpus);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->is_cpu());
  }
}

TEST(ChooseDeviceTest, OneGpuPerLocalRank) {
  for (int r = 0; r < 4; ++r) {
    auto d = ChooseDevice(ParallelConfig::CUDA, r, 4, 8);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_EQ(*d, c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(r)));
  }
}

TEST(ChooseDeviceTest, MoreRanksThanGpusIsAnError) {
  // local_rank % device_count would put ranks 0 and 2 on cuda:0, which NCCL refuses.
  auto d = ChooseDevice(ParallelConfig::CUDA, 2, 3, 2);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().message(),
            "parallel.device (CUDA): 3 ranks on this node but 2 visible GPU(s); each rank needs its own GPU: "
            "start at most 2 ranks per node, or use parallel.device CPU");
}

TEST(ChooseDeviceTest, NoGpuIsAnError) {
  auto d = ChooseDevice(ParallelConfig::CUDA, 0, 1, 0);
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("valid here: CPU"), std::string::npos) << d.status();
  EXPECT_FALSE(ChooseDevice(ParallelConfig::CUDA, 1, 1, 4).ok());  // local rank outside the node
}

TEST(SelectDeviceTest, CpuIsANoOp) { SelectDevice(c10::Device(c10::kCPU)); }

}  // namespace
}  // namespace hybridmoe

// A fake accelerator for tests: LibTorch's PrivateUse1 device type ("privateuseone:0"), backed by host memory.
//
// Purpose: prove without a GPU that a forward/backward path creates no tensor on a fixed device. Tensors of the
// fake device are real (data-dependent ops such as bincount, nonzero and .item() work, unlike on `meta`, where
// LibTorch's C++ also lacks kernels the model uses: where.self, index_select), and
// every operator that reaches the fake backend first checks that all of its tensor arguments live on the fake
// device - the check CUDA kernels make ("Expected all tensors to be on the same device") - except 0-dim CPU
// tensors, which CUDA accepts as scalars too. A table built on the CPU inside forward() therefore fails there
// exactly as it would on a GPU. Ops run by LibTorch's boxed CPU fallback; view ops get the fake device's own
// kernels so aliasing (in-place writes through views) stays exact.
//
// It prints as "fake:0". Kernels register when the program starts (alwayslink).
#pragma once

#include <c10/core/Device.h>

namespace hybridmoe::testing {

// The fake device (registers the backend on first use).
c10::Device FakeDevice();

}  // namespace hybridmoe::testing

#include "tests/models/fake_device.h"

#include <cstring>
#include <optional>

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/CPUFallback.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

namespace hybridmoe::testing {
namespace {

constexpr c10::DeviceType kFake = c10::DeviceType::PrivateUse1;
const c10::DispatchKeySet kFakeKeys(c10::DispatchKey::PrivateUse1);

// Host memory labelled with the fake device.
struct FakeAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t bytes) override {
    void* p = c10::alloc_cpu(bytes);
    return {p, p, &c10::free_cpu, c10::Device(kFake, 0)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &c10::free_cpu; }
  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }
};
FakeAllocator allocator;

// A CPU tensor over the same memory (strides and offset kept), for copies across the fake boundary.
at::Tensor HostAlias(const at::Tensor& t) {
  if (t.is_cpu()) return t;
  return at::from_blob(t.data_ptr(), t.sizes(), t.strides(), t.options().device(at::kCPU));
}

at::Tensor Empty(c10::IntArrayRef size, std::optional<at::ScalarType> dtype, std::optional<at::Layout>,
                 std::optional<at::Device>, std::optional<bool>, std::optional<at::MemoryFormat> memory_format) {
  return at::detail::empty_generic(size, &allocator, kFakeKeys, c10::dtype_or_default(dtype), memory_format);
}

at::Tensor EmptyStrided(c10::IntArrayRef size, c10::IntArrayRef stride, std::optional<at::ScalarType> dtype,
                        std::optional<at::Layout>, std::optional<at::Device>, std::optional<bool>) {
  return at::detail::empty_strided_generic(size, stride, &allocator, kFakeKeys, c10::dtype_or_default(dtype));
}

at::Tensor CopyFrom(const at::Tensor& self, const at::Tensor& dst, bool /*non_blocking*/) {
  HostAlias(dst).copy_(HostAlias(self));
  return dst;
}

at::Tensor CopyFromAndResize(const at::Tensor& self, const at::Tensor& dst) {
  at::native::resize_(dst, self.sizes());
  return CopyFrom(self, dst, false);
}

void Check(const c10::OperatorHandle& op, const at::Tensor& t) {
  if (!t.defined() || t.device().type() == kFake || (t.is_cpu() && t.dim() == 0)) return;
  TORCH_CHECK(false, op.schema().operator_name(), ": expected all tensors on ", c10::Device(kFake, 0),
              ", found one on ", t.device(), " of shape ", t.sizes(), " (a tensor made on a fixed device)");
}

// Every other operator: the device check a CUDA kernel makes, then the CPU kernel on host copies.
void CheckedCpuFallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t n = op.schema().arguments().size();
  for (size_t i = stack->size() - n; i < stack->size(); ++i) {
    const c10::IValue& v = (*stack)[i];
    if (v.isTensor()) {
      Check(op, v.toTensor());
    } else if (v.isList()) {
      for (const c10::IValue& e : v.toListRef()) {
        if (e.isTensor()) Check(op, e.toTensor());
      }
    }
  }
  at::native::cpu_fallback(op, stack, /*error_on_views=*/true);
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", Empty);
  m.impl("empty_strided", EmptyStrided);
  m.impl("as_strided", at::native::as_strided_tensorimpl);
  m.impl("view", at::native::view);
  m.impl("_reshape_alias", at::native::_reshape_alias);
  m.impl("resize_", at::native::resize_);
  m.impl("_copy_from", CopyFrom);
  m.impl("_copy_from_and_resize", CopyFromAndResize);
}

// Module::to() swaps a parameter's data with set_data, which LibTorch allows only between its dense backends
// (CPU, CUDA, ...). As LibTorch's own out-of-tree backend example does, the fake device declares itself
// compatible, so that module->to(FakeDevice()) works as module->to(kCUDA) does.
bool CompatibleShallowCopy(const at::Tensor&, const at::Tensor&) { return true; }

// At the autograd key: the operator is CompositeImplicitAutograd, which that key dispatches to first.
TORCH_LIBRARY_IMPL(aten, AutogradPrivateUse1, m) { m.impl("_has_compatible_shallow_copy_type", CompatibleShallowCopy); }

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) { m.fallback(torch::CppFunction::makeFromBoxedFunction<&CheckedCpuFallback>()); }

// One device and one stream on which everything is already done: events are no-ops (the autograd engine
// records them to order backward work across streams).
struct FakeGuardImpl final : c10::impl::NoOpDeviceGuardImpl<kFake> {
  c10::Device exchangeDevice(c10::Device) const override { return c10::Device(kFake, 0); }
  c10::Device getDevice() const override { return c10::Device(kFake, 0); }
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void synchronizeEvent(void*) const override {}
};
C10_REGISTER_GUARD_IMPL(PrivateUse1, FakeGuardImpl);

// One device, always current (the autograd engine and at::accelerator ask).
struct FakeHooks final : at::PrivateUse1HooksInterface {
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kFake, 0); }
};

const bool registered = [] {
  c10::register_privateuse1_backend("fake");
  at::RegisterPrivateUse1HooksInterface(new FakeHooks);
  return true;
}();

}  // namespace

c10::Device FakeDevice() {
  TORCH_INTERNAL_ASSERT(registered);
  return c10::Device(kFake, 0);
}

}  // namespace hybridmoe::testing

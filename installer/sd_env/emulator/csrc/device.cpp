// The device itself: the device guard, random generators, and the
// few ops a backend must implement natively (allocation, copies, views).
#include "emu.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/EmptyTensor.h>
#include <ATen/core/GeneratorForPrivateuseone.h>
#include <ATen/detail/PrivateUse1HooksInterface.h>
#include <ATen/native/Resize.h>
#include <ATen/ops/_reshape_alias_native.h>
#include <ATen/ops/as_strided_native.h>
#include <ATen/ops/resize_native.h>
#include <ATen/ops/set_native.h>
#include <ATen/ops/view_native.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

namespace emu {

// ---- devices ---------------------------------------------------------------

c10::DeviceIndex device_count() {
  static const c10::DeviceIndex count = [] {
    const char* env = std::getenv("SG_MAX_DEVICE_COUNT");
    int n = env && *env ? std::atoi(env) : 1;
    return static_cast<c10::DeviceIndex>(std::max(0, std::min(n, 8)));
  }();
  return count;
}

// Like CUDA, the current device is per thread (autograd's device threads set it).
static thread_local c10::DeviceIndex tls_device = 0;

c10::DeviceIndex current_device() { return tls_device; }

void set_device(c10::DeviceIndex index) {
  if (index < 0) return;
  TORCH_CHECK(index < device_count(), "Invalid device ordinal tpu:", static_cast<int>(index), " (",
              static_cast<int>(device_count()), " emulated device(s); see SG_MAX_DEVICE_COUNT)");
  tls_device = index;
}

// ---- device guard ----------------------------------------------------------

struct TpuGuardImpl final : c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kTpu; }
  c10::Device exchangeDevice(c10::Device d) const override {
    c10::Device old = getDevice();
    setDevice(d);
    return old;
  }
  c10::Device getDevice() const override { return c10::Device(kTpu, current_device()); }
  void setDevice(c10::Device d) const override { set_device(d.index()); }
  void uncheckedSetDevice(c10::Device d) const noexcept override {
    if (d.index() >= 0) tls_device = d.index();
  }
  c10::Stream getStream(c10::Device d) const noexcept override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream getDefaultStream(c10::Device d) const override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const noexcept override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return device_count(); }
  // Work is synchronous, so events and streams have nothing to wait for.
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
};

C10_REGISTER_GUARD_IMPL(PrivateUse1, TpuGuardImpl);

// ---- random numbers --------------------------------------------------------

// A device generator whose draws are made by a CPU generator it owns, so the
// CPU kernels (which only accept CPU generators) can run device draws. Its
// stream is its own, as a card's is: the CPU generator is seeded with a mix
// of the device seed, so the same seed draws other numbers than the CPU does
// (code that relies on CPU/device parity fails here as it would on the card),
// yet reproducibly. The state is the CPU generator's plus the device seed.
struct TpuGenerator final : c10::GeneratorImpl {
  explicit TpuGenerator(c10::DeviceIndex index)
      : c10::GeneratorImpl(c10::Device(kTpu, index), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1)),
        cpu(at::make_generator<at::CPUGeneratorImpl>(mix(c10::default_rng_seed_val))),
        seed_(c10::default_rng_seed_val) {}
  static uint64_t mix(uint64_t seed) {  // splitmix64 of the seed and "tpu"
    uint64_t z = seed + 0x9e3779b97f4a7c15ULL + 0x747075ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  void set_current_seed(uint64_t seed) override {
    seed_ = seed;
    cpu.set_current_seed(mix(seed));
  }
  void set_offset(uint64_t offset) override { cpu.unsafeGetGeneratorImpl()->set_offset(offset); }
  uint64_t get_offset() const override { return cpu.unsafeGetGeneratorImpl()->get_offset(); }
  uint64_t current_seed() const override { return seed_; }
  uint64_t seed() override {
    uint64_t fresh = c10::detail::getNonDeterministicRandom();
    set_current_seed(fresh);
    return fresh;
  }
  void set_state(const c10::TensorImpl& state) override {
    auto bytes = at::Tensor(c10::intrusive_ptr<c10::TensorImpl>::reclaim_copy(const_cast<c10::TensorImpl*>(&state)));
    TORCH_CHECK(bytes.scalar_type() == at::kByte && bytes.dim() == 1 && bytes.numel() > 8,
                "RNG state of a tpu generator must be a uint8 tensor from its get_state()");
    int64_t n = bytes.numel() - 8;
    auto inner = bytes.narrow(0, 0, n).clone();
    cpu.unsafeGetGeneratorImpl()->set_state(*inner.unsafeGetTensorImpl());
    std::memcpy(&seed_, bytes.narrow(0, n, 8).contiguous().data_ptr<uint8_t>(), 8);
  }
  c10::intrusive_ptr<c10::TensorImpl> get_state() const override {
    auto inner = at::Tensor(cpu.unsafeGetGeneratorImpl()->get_state());
    auto seed = at::empty({8}, at::kByte);
    std::memcpy(seed.data_ptr<uint8_t>(), &seed_, 8);
    return at::cat({inner, seed}).unsafeReleaseIntrusivePtr();
  }
  TpuGenerator* clone_impl() const override {
    auto* copy = new TpuGenerator(device().index());
    copy->cpu = cpu.clone();
    copy->seed_ = seed_;
    return copy;
  }
  at::Generator cpu;
  uint64_t seed_;
};

static c10::DeviceIndex resolve(c10::DeviceIndex index) { return index < 0 ? current_device() : index; }

const at::Generator& default_generator(c10::DeviceIndex index) {
  static std::once_flag once;
  static std::vector<at::Generator> generators;
  std::call_once(once, [] {
    for (c10::DeviceIndex i = 0; i < std::max<c10::DeviceIndex>(device_count(), 1); ++i)
      generators.push_back(at::make_generator<TpuGenerator>(i));
  });
  index = resolve(index);
  TORCH_CHECK(index < static_cast<c10::DeviceIndex>(generators.size()), "no emulated device tpu:",
              static_cast<int>(index));
  return generators[index];
}

at::Generator cpu_generator_of(const at::Generator& gen) {
  TORCH_CHECK(gen.device().type() == kTpu, "Expected a 'tpu' device type for generator but found '",
              gen.device().type(), "'");
  return static_cast<TpuGenerator*>(gen.unsafeGetGeneratorImpl())->cpu;
}

static at::Generator make_tpu_generator(c10::DeviceIndex index) {
  return at::make_generator<TpuGenerator>(resolve(index));
}
REGISTER_GENERATOR_PRIVATEUSE1(make_tpu_generator)

struct TpuHooks final : at::PrivateUse1HooksInterface {
  const at::Generator& getDefaultGenerator(c10::DeviceIndex index) EMU_HOOKS_CONST override {
    return default_generator(index);
  }
  at::Device getDeviceFromPtr(void*) const override { return c10::Device(kTpu, current_device()); }
  EMU_HOOKS_EXTRA
};

static const bool hooks_registered = [] {
  at::RegisterPrivateUse1HooksInterface(new TpuHooks());
  return true;
}();

// ---- native ops ------------------------------------------------------------

static c10::Device target(c10::optional<c10::Device> device) {
  return c10::Device(kTpu, device && device->has_index() ? device->index() : current_device());
}

static at::Tensor empty_memory_format(at::IntArrayRef size, c10::optional<at::ScalarType> dtype,
                                      c10::optional<at::Layout>, c10::optional<at::Device> device,
                                      c10::optional<bool>, c10::optional<at::MemoryFormat> memory_format) {
  check_dtype_alloc(c10::dtype_or_default(dtype));
  c10::DeviceGuard guard(target(device));
  return at::detail::empty_generic(size, allocator(), c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                   c10::dtype_or_default(dtype), memory_format);
}

static at::Tensor empty_strided(at::IntArrayRef size, at::IntArrayRef stride, c10::optional<at::ScalarType> dtype,
                                c10::optional<at::Layout>, c10::optional<at::Device> device, c10::optional<bool>) {
  check_dtype_alloc(c10::dtype_or_default(dtype));
  c10::DeviceGuard guard(target(device));
  return at::detail::empty_strided_generic(size, stride, allocator(),
                                           c10::DispatchKeySet(c10::DispatchKey::PrivateUse1),
                                           c10::dtype_or_default(dtype));
}

// copy_ hands every copy that involves the device to _copy_from; both sides
// are host memory, so the CPU copy (with its casts and broadcasting) does it.
static at::Tensor copy_from(const at::Tensor& self, const at::Tensor& dst, bool) {
  cpu_view(dst).copy_(cpu_view(self));
  return dst;
}

static at::Tensor copy_from_and_resize(const at::Tensor& self, const at::Tensor& dst) {
  dst.resize_(self.sizes());
  return copy_from(self, dst, false);
}

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("empty.memory_format", &empty_memory_format);
  m.impl("empty_strided", &empty_strided);
  m.impl("_copy_from", &copy_from);
  m.impl("_copy_from_and_resize", &copy_from_and_resize);
  m.impl("view", &at::native::view);
  m.impl("as_strided", &at::native::as_strided_tensorimpl);
  m.impl("_reshape_alias", &at::native::_reshape_alias);
  m.impl("resize_", &at::native::resize_);  // grows the storage with its own (device) allocator
  m.impl("set_.source_Storage", &at::native::set_);
  m.impl("set_.source_Storage_storage_offset", &at::native::set_storage_cpu_);
  m.impl("set_.source_Tensor", &at::native::set_tensor_);
}

}  // namespace emu

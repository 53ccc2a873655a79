// Shared declarations of the emulated "tpu" (PrivateUse1) device.
//
// Device memory is host memory, so a "tpu" tensor can be seen as a CPU
// tensor without copying: every op the emulator does not implement runs the
// CPU kernel on such views (see fallback.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <array>
#include <map>
#include <string>

#include "compat.h"

namespace emu {

constexpr c10::DeviceType kTpu = c10::DeviceType::PrivateUse1;

// How many emulated devices exist: $SG_MAX_DEVICE_COUNT (default 1, at most 8).
c10::DeviceIndex device_count();
c10::DeviceIndex current_device();
void set_device(c10::DeviceIndex index);

// ---- memory (memory.cpp) ----
c10::Allocator* allocator();
// Host memory a CPU kernel allocated becomes device memory: counted on `index` (or refused past its capacity).
c10::DataPtr adopt(c10::DataPtr host, size_t nbytes, c10::DeviceIndex index);
void resize_bytes(const c10::Storage& storage, size_t nbytes);
struct MemoryStats {
  std::array<int64_t, 4> bytes, requested, blocks;  // current, peak, allocated, freed
  int64_t ooms, capacity;
};
MemoryStats memory_stats(c10::DeviceIndex index);
void reset_peak(c10::DeviceIndex index);
void reset_accumulated(c10::DeviceIndex index);
void set_capacity(c10::DeviceIndex index, int64_t bytes);

// ---- the strict profile (strict.cpp) ----
// The rules the profile (a data file, loaded from Python) turns on; all off by default.
struct Strict {
  bool refuse_int64_alloc = false;      // allocating int64 on the device fails
  bool int64_to_int32 = false;          // int64 results and host->device copies become int32
  int64_t max_allocation = 0;           // a single allocation of at least this many bytes fails (0: none)
  std::string int64_message, max_allocation_message;
};
Strict& strict();
// Turn one rule on (its kernels are registered then); `message` is the card's error where it has one.
void enable_rule(const std::string& name, const std::string& message, int64_t value);
void check_allocation(c10::DeviceIndex index, int64_t nbytes);
void check_dtype_alloc(at::ScalarType dtype);

// Ops the device is told to lack ($SD_ENV_EMULATED_CPU_OPS): run on the CPU, counted by name.
void set_cpu_ops(const std::string& comma_separated);
bool count_if_cpu_op(const c10::OperatorHandle& op);
std::map<std::string, int64_t> cpu_fallback_counts();

// A CPU tensor sharing `t`'s memory (same sizes, strides and offset).
at::Tensor cpu_view(const at::Tensor& t);

// The default generator of a device and the CPU generator that does its draws.
const at::Generator& default_generator(c10::DeviceIndex index);
at::Generator cpu_generator_of(const at::Generator& tpu_generator);

// The CPU kernel of `op` on host arguments, Half computed in float where it must be (half.cpp).
torch::jit::Stack run_on_cpu(const c10::OperatorHandle& op, const torch::jit::Stack& host);

// Boxed fallback: the CPU kernel on zero-copy views, results mapped back to "tpu".
void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack);
void route_composites_to_cpu();

}  // namespace emu

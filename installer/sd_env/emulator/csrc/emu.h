// Shared declarations of the emulated "tpu" (PrivateUse1) device.
//
// Device memory is host memory from malloc, so a "tpu" tensor can be seen
// as a CPU tensor without copying: every op the emulator does not implement
// runs the CPU kernel on such views (see fallback.cpp).
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/Generator.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

namespace emu {

constexpr c10::DeviceType kTpu = c10::DeviceType::PrivateUse1;

// How many emulated devices exist: $SG_MAX_DEVICE_COUNT (default 1, at most 8).
c10::DeviceIndex device_count();
c10::DeviceIndex current_device();
void set_device(c10::DeviceIndex index);

c10::Allocator* allocator();

// A CPU tensor sharing `t`'s memory (same sizes, strides and offset).
at::Tensor cpu_view(const at::Tensor& t);

// The default generator of a device and the CPU generator that does its draws.
const at::Generator& default_generator(c10::DeviceIndex index);
at::Generator cpu_generator_of(const at::Generator& tpu_generator);

// Boxed fallback: the CPU kernel on zero-copy views, results mapped back to "tpu".
void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack);
void route_composites_to_cpu();

}  // namespace emu

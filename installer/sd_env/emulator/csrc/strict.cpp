// The strict profile's rules: what the real plugin refuses or changes, turned
// on one by one from Python (torch_tpu/_profile.py reads the profile, a data
// file naming each rule with its source in Sophgo's code). All off by default.
//
// Also the ops the device is told to lack ($SD_ENV_EMULATED_CPU_OPS), which
// the card would run on the CPU: counted by name for a rehearsal's report.
#include "emu.h"

#include <ATen/ops/_to_copy_native.h>
#include <ATen/ops/arange_native.h>
#include <ATen/ops/scalar_tensor_native.h>
#include <torch/library.h>

#include <mutex>
#include <sstream>

namespace emu {

Strict& strict() {
  static Strict rules;
  return rules;
}

void check_allocation(c10::DeviceIndex, int64_t nbytes) {
  const Strict& rules = strict();
  TORCH_CHECK(rules.max_allocation == 0 || nbytes < rules.max_allocation, rules.max_allocation_message);
}

void check_dtype_alloc(at::ScalarType dtype) {
  TORCH_CHECK(!(strict().refuse_int64_alloc && dtype == at::kLong), strict().int64_message);
}

namespace {

bool integral(const at::Scalar& s) { return s.isIntegral(/*includeBool=*/false); }

// CopyFrom.cpp's _to_copy: a host int64 tensor copied to the device arrives as int32.
at::Tensor to_copy(const at::Tensor& self, c10::optional<at::ScalarType> dtype, c10::optional<at::Layout> layout,
                       c10::optional<at::Device> device, c10::optional<bool> pin_memory, bool non_blocking,
                       c10::optional<at::MemoryFormat> memory_format) {
  if (self.device().type() == c10::kCPU && device && device->type() == kTpu &&
      dtype.value_or(self.scalar_type()) == at::kLong)
    return at::native::_to_copy(self, at::kInt, layout, device, pin_memory, non_blocking, memory_format);
  return at::native::_to_copy(self, dtype, layout, device, pin_memory, non_blocking, memory_format);
}

// Arange.cpp: integer aranges are int32; an int64 dtype is refused.
at::Tensor arange_start_step(const at::Scalar& start, const at::Scalar& end, const at::Scalar& step,
                             c10::optional<at::ScalarType> dtype, c10::optional<at::Layout> layout,
                             c10::optional<at::Device> device, c10::optional<bool> pin_memory) {
  if (dtype) {
    TORCH_CHECK(*dtype == at::kInt || *dtype == at::kFloat || *dtype == at::kHalf || *dtype == at::kBFloat16,
                "arange only support int32 & float32 now");
  } else if (integral(start) && integral(end) && integral(step)) {
    dtype = at::kInt;
  }
  return at::native::arange(start, end, step, dtype, layout, device, pin_memory);
}

at::Tensor arange_start(const at::Scalar& start, const at::Scalar& end, c10::optional<at::ScalarType> dtype,
                        c10::optional<at::Layout> layout, c10::optional<at::Device> device,
                        c10::optional<bool> pin_memory) {
  return arange_start_step(start, end, 1, dtype, layout, device, pin_memory);
}

at::Tensor arange_end(const at::Scalar& end, c10::optional<at::ScalarType> dtype, c10::optional<at::Layout> layout,
                      c10::optional<at::Device> device, c10::optional<bool> pin_memory) {
  return arange_start_step(0, end, 1, dtype, layout, device, pin_memory);
}

// Scalar.cpp: an int64 scalar tensor is made int32.
at::Tensor scalar_tensor(const at::Scalar& s, c10::optional<at::ScalarType> dtype, c10::optional<at::Layout> layout,
                         c10::optional<at::Device> device, c10::optional<bool> pin_memory) {
  if (dtype == at::kLong) dtype = at::kInt;
  return at::native::scalar_tensor(s, dtype, layout, device, pin_memory);
}

std::mutex cpu_ops_mutex;
std::map<std::string, int64_t> cpu_op_counts;  // op -> calls, for every op named in $SD_ENV_EMULATED_CPU_OPS

}  // namespace

// The kernels behind the int64 rules, registered when a profile turns a rule on.
void enable_rule(const std::string& name, const std::string& message, int64_t value) {
  Strict& rules = strict();
  if (name == "refuse_int64_alloc") {
    rules.refuse_int64_alloc = true;
    rules.int64_message = message;
  } else if (name == "int64_results_to_int32") {
    rules.int64_to_int32 = true;
  } else if (name == "int64_host_copy_to_int32") {
    // BackendSelect sends a copy to the device (a CPU self, device=tpu) to the device's kernel.
    static auto* lib = new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::PrivateUse1, __FILE__,
                                          __LINE__);
    lib->impl("_to_copy", TORCH_FN(to_copy));
  } else if (name == "arange_int32") {
    static auto* lib = new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::PrivateUse1, __FILE__,
                                          __LINE__);
    lib->impl("arange", TORCH_FN(arange_end));
    lib->impl("arange.start", TORCH_FN(arange_start));
    lib->impl("arange.start_step", TORCH_FN(arange_start_step));
  } else if (name == "scalar_tensor_int32") {
    static auto* lib = new torch::Library(torch::Library::IMPL, "aten", c10::DispatchKey::PrivateUse1, __FILE__,
                                          __LINE__);
    lib->impl("scalar_tensor", TORCH_FN(scalar_tensor));
  } else if (name == "max_allocation") {
    rules.max_allocation = value;
    rules.max_allocation_message = message;
  } else {
    TORCH_CHECK(false, "unknown strict rule ", name);
  }
}

void set_cpu_ops(const std::string& comma_separated) {
  std::lock_guard<std::mutex> lock(cpu_ops_mutex);
  std::stringstream in(comma_separated);
  std::string name;
  while (std::getline(in, name, ',')) {
    if (name.empty()) continue;
    if (name.rfind("aten::", 0) != 0) name = "aten::" + name;
    cpu_op_counts.emplace(name, 0);
  }
}

bool count_if_cpu_op(const c10::OperatorHandle& op) {
  std::lock_guard<std::mutex> lock(cpu_ops_mutex);
  if (cpu_op_counts.empty()) return false;
  auto found = cpu_op_counts.find(op.schema().name());
  if (found == cpu_op_counts.end()) return false;
  found->second++;
  return true;
}

std::map<std::string, int64_t> cpu_fallback_counts() {
  std::lock_guard<std::mutex> lock(cpu_ops_mutex);
  std::map<std::string, int64_t> ran;
  for (const auto& [name, count] : cpu_op_counts)
    if (count) ran.emplace(name, count);
  return ran;
}

}  // namespace emu

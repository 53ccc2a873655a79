// The Python side of the extension: torch_tpu._C.
#include "emu.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/Generator.h>  // not torch/extension.h: it triples the build time

namespace py = pybind11;

namespace emu {
void bind_sccl(py::module_& m);  // sccl.cpp: the emulated "sccl" c10d backend
}

namespace {

at::ScalarType dtype_named(const std::string& name) {
  if (name == "torch.float16") return at::kHalf;
  if (name == "torch.bfloat16") return at::kBFloat16;
  if (name == "torch.float32") return at::kFloat;
  TORCH_CHECK(false, "unsupported autocast dtype ", name, " (float16, bfloat16 or float32)");
}

std::string name_of(at::ScalarType dtype) {
  switch (dtype) {
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    default: return "float32";
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CPU-backed emulation of Sophgo's torch_tpu device (PrivateUse1)";
  emu::route_composites_to_cpu();
  m.def("device_count", [] { return static_cast<int>(emu::device_count()); });
  m.def("current_device", [] { return static_cast<int>(emu::current_device()); });
  m.def("set_device", [](int index) { emu::set_device(static_cast<c10::DeviceIndex>(index)); });
  m.def("is_autocast_enabled", [] { return emu::compat::autocast_enabled(); });
  m.def("set_autocast_enabled", [](bool on) { emu::compat::set_autocast_enabled(on); });
  m.def("get_autocast_dtype", [] { return name_of(emu::compat::autocast_dtype()); });
  m.def("set_autocast_dtype", [](const std::string& name) { emu::compat::set_autocast_dtype(dtype_named(name)); });
  emu::bind_sccl(m);
  m.def("torch_era", [] { return EMU_TORCH_28 ? "2.8" : "2.1"; });
  // memory (memory.cpp): the CUDA-style counters, per device
  m.def("memory_stats", [](int index) {
    emu::MemoryStats got = emu::memory_stats(static_cast<c10::DeviceIndex>(index));
    py::dict out;
    auto four = [](const std::array<int64_t, 4>& c) {
      py::dict d;
      d["current"] = c[0];
      d["peak"] = c[1];
      d["allocated"] = c[2];
      d["freed"] = c[3];
      return d;
    };
    out["allocated_bytes"] = four(got.bytes);
    out["requested_bytes"] = four(got.requested);
    out["allocation"] = four(got.blocks);
    out["num_ooms"] = got.ooms;
    out["capacity"] = got.capacity;
    return out;
  });
  m.def("reset_peak_memory_stats", [](int index) { emu::reset_peak(static_cast<c10::DeviceIndex>(index)); });
  m.def("reset_accumulated_memory_stats", [](int index) {
    emu::reset_accumulated(static_cast<c10::DeviceIndex>(index));
  });
  m.def("set_memory_capacity", [](int index, int64_t bytes) {
    emu::set_capacity(static_cast<c10::DeviceIndex>(index), bytes);
  });
  // the strict profile (strict.cpp)
  m.def("enable_rule", [](const std::string& name, const std::string& message, int64_t value) {
    emu::enable_rule(name, message, value);
  });
  m.def("set_cpu_ops", [](const std::string& names) { emu::set_cpu_ops(names); });
  m.def("cpu_fallback_counts", [] { return emu::cpu_fallback_counts(); });
  m.def("default_generator", [](int index) {
    return py::reinterpret_steal<py::object>(
        THPGenerator_initDefaultGenerator(emu::default_generator(static_cast<c10::DeviceIndex>(index))));
  });
}

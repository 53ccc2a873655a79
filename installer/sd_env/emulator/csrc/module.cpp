// The Python side of the extension: torch_tpu._C.
#include "emu.h"

#include <ATen/autocast_mode.h>
#include <pybind11/pybind11.h>
#include <torch/csrc/Generator.h>  // not torch/extension.h: it triples the build time

namespace py = pybind11;

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
  m.def("is_autocast_enabled", [] { return at::autocast::is_privateuseone_enabled(); });
  m.def("set_autocast_enabled", [](bool on) { at::autocast::set_privateuseone_enabled(on); });
  m.def("get_autocast_dtype", [] { return name_of(at::autocast::get_autocast_privateuseone_dtype()); });
  m.def("set_autocast_dtype", [](const std::string& name) {
    at::autocast::set_autocast_privateuseone_dtype(dtype_named(name));
  });
  m.def("default_generator", [](int index) {
    return py::reinterpret_steal<py::object>(
        THPGenerator_initDefaultGenerator(emu::default_generator(static_cast<c10::DeviceIndex>(index))));
  });
}

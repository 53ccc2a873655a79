// Every op the device does not implement natively: run the CPU kernel on
// zero-copy CPU views of the device tensors, then map the results back
// (written arguments, views of arguments, new tensors). Half is handled in
// half.cpp.
//
// Unlike at::native::cpu_fallback this never copies inputs, refuses to mix
// devices the way CUDA does, swaps device generators for the CPU generators
// that make their draws, and runs CPU kernels that lack Half in float.
#include "ivalues.h"

#include <c10/core/CPUAllocator.h>
#include <ATen/core/enum_tag.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace emu {
namespace {

using c10::IValue;

const c10::DispatchKeySet kCpuKeys(c10::DispatchKey::CPU);
const c10::DispatchKeySet kTpuKeys(c10::DispatchKey::PrivateUse1);

c10::Storage host_storage(const c10::Storage& device) {
  // The deleter owns a reference to the device storage: the view keeps it alive.
  c10::DataPtr data = c10::InefficientStdFunctionContext::makeDataPtr(
      device.mutable_data(), [keep = device](void*) {}, c10::Device(c10::kCPU));
  return c10::Storage(c10::Storage::use_byte_size_t(), device.nbytes(), std::move(data), c10::GetCPUAllocator(),
                      /*resizable=*/true);
}

at::Tensor tensor_on(c10::Storage storage, c10::DispatchKeySet keys, const at::Tensor& like) {
  auto t = at::detail::make_tensor<c10::TensorImpl>(std::move(storage), keys, like.dtype());
  t.unsafeGetTensorImpl()->set_sizes_and_strides(like.sizes(), like.strides(), like.storage_offset());
  return t;
}

bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() && a.strides() == b.strides() && a.storage_offset() == b.storage_offset();
}

// One call of the fallback: which device it runs on and how device storages
// map to the host storages seen by the CPU kernel.
struct Call {
  const c10::OperatorHandle& op;
  c10::Device device{kTpu, -1};
  std::unordered_map<c10::StorageImpl*, c10::Storage> host_of;    // device storage -> host storage
  std::unordered_map<c10::StorageImpl*, c10::Storage> device_of;  // host storage -> device storage
  std::unordered_map<c10::TensorImpl*, at::Tensor> original;      // host view -> device tensor
  std::vector<std::pair<at::Tensor, at::Tensor>> written;         // (device tensor, host view)

  explicit Call(const c10::OperatorHandle& handle) : op(handle) {}

  [[noreturn]] void mixed(c10::Device other, const std::string& arg) const {
    TORCH_CHECK(false, "Expected all tensors to be on the same device, but found at least two devices, ", device,
                " and ", other, "! (when checking argument for argument ", arg, " in method ",
                op.schema().operator_name(), ")");
  }

  std::string pending_cpu;  // the first argument that is a CPU tensor where CUDA takes none

  // `cpu_ok`: CPU tensors are fine for this argument (indices); `scalar_ok`: a 0-dim one is.
  void check(const at::Tensor& t, const std::string& arg, bool write, bool cpu_ok, bool scalar_ok) {
    if (!t.defined()) return;
    if (t.device().type() == kTpu) {
      if (device.index() < 0)
        device = t.device();
      else if (t.device() != device)
        mixed(t.device(), arg);
    } else if (t.device().type() == c10::kCPU) {
      // As on CUDA: a Python number is fine anywhere, a 0-dim CPU tensor only where the op
      // is elementwise; any other CPU tensor is a placement bug.
      bool scalar = t.dim() == 0 && (scalar_ok || t.unsafeGetTensorImpl()->is_wrapped_number());
      if ((write || !(cpu_ok || scalar)) && pending_cpu.empty()) pending_cpu = arg;
    }
  }

  at::Tensor to_host(const at::Tensor& t, bool write) {
    if (!t.defined() || t.device().type() != kTpu) return t;
    c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    auto found = host_of.find(impl);
    if (found == host_of.end()) {
      c10::Storage host = host_storage(t.storage());
      device_of.emplace(host.unsafeGetStorageImpl(), t.storage());
      found = host_of.emplace(impl, std::move(host)).first;
    }
    at::Tensor view = tensor_on(found->second, kCpuKeys, t);
    original.emplace(view.unsafeGetTensorImpl(), t);
    if (write) written.emplace_back(t, view);
    return view;
  }

  IValue to_host(const IValue& v, bool write) {
    if (v.isGenerator()) return cpu_generator_of(v.toGenerator());
    if (v.isDevice() && v.toDevice().type() == kTpu) return c10::Device(c10::kCPU);
    return map_tensors(v, [&](const at::Tensor& t) { return to_host(t, write); });
  }

  // The CPU kernel may have resized a written argument into new host memory:
  // that memory becomes the device storage's.
  void sync_written() {
    for (auto& [host_impl, device] : device_of) {
      if (host_impl->data() == device.data()) continue;
      c10::DataPtr data = emu::adopt(host_impl->set_data_ptr(c10::DataPtr(nullptr, c10::Device(c10::kCPU))),
                                     host_impl->nbytes(), device.device().index());
      device.unsafeGetStorageImpl()->set_data_ptr_noswap(std::move(data));
      device.unsafeGetStorageImpl()->set_nbytes(host_impl->nbytes());
    }
    for (auto& [dev, host] : written) {
      if (!same_layout(dev, host))
        dev.unsafeGetTensorImpl()->set_sizes_and_strides(host.sizes(), host.strides(), host.storage_offset());
    }
  }

  std::unordered_map<c10::StorageImpl*, size_t> return_refs;
  std::unordered_map<c10::StorageImpl*, c10::Storage> adopted;

  at::Tensor to_device(const at::Tensor& t) {
    if (!t.defined() || t.device().type() != c10::kCPU) return t;
    auto same = original.find(t.unsafeGetTensorImpl());
    if (same != original.end()) return same->second;
    c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
    auto alias = device_of.find(impl);
    if (alias != device_of.end()) return tensor_on(alias->second, kTpuKeys, t);  // a view of an argument
    if (t.scalar_type() == at::kLong && strict().int64_to_int32) {
      // The card's results reach the device as int32 (its CPU fallback's copy, its native kernels).
      at::Tensor narrow = t.to(at::kInt);
      return tensor_on(adopt(narrow.storage().unsafeGetStorageImpl(), true), kTpuKeys, narrow);
    }
    if (t.scalar_type() == at::kLong) check_dtype_alloc(at::kLong);
    auto done = adopted.find(impl);
    if (done == adopted.end()) done = adopted.emplace(impl, adopt(impl, false)).first;
    return tensor_on(done->second, kTpuKeys, t);
  }

  // A new result: take over its memory when nothing else holds it (`fresh`: a
  // temporary of ours), else copy. Either way the device's allocator counts it.
  c10::Storage adopt(c10::StorageImpl* impl, bool fresh) {
    c10::Device where(kTpu, device.index() < 0 ? current_device() : device.index());
    size_t nbytes = impl->nbytes();
    if ((fresh || c10::raw::intrusive_ptr::use_count(impl) == return_refs[impl]) && impl->data() != nullptr) {
      c10::DataPtr data = emu::adopt(impl->set_data_ptr(c10::DataPtr(nullptr, c10::Device(c10::kCPU))), nbytes,
                                     where.index());
      return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), allocator(), true);
    }
    c10::DeviceGuard guard(where);
    c10::DataPtr data = allocator()->allocate(nbytes);
    if (nbytes) std::memcpy(data.get(), impl->data(), nbytes);
    return c10::Storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data), allocator(), true);
  }

  void count_refs(const IValue& v) {
    if (v.isTensor()) {
      const at::Tensor& t = v.toTensor();
      if (t.defined() && t.has_storage()) return_refs[t.storage().unsafeGetStorageImpl()]++;
    } else if (v.isList()) {
      for (const IValue& item : v.toList()) count_refs(item);
    }
  }

  IValue to_device(const IValue& v) {
    return map_tensors(v, [&](const at::Tensor& t) { return to_device(t); });
  }
};

bool is_generator(const c10::Argument& arg) {
  const c10::TypePtr& type = arg.type();
  if (type->kind() == c10::TypeKind::GeneratorType) return true;
  auto optional = type->cast<c10::OptionalType>();
  return optional && optional->getElementType()->kind() == c10::TypeKind::GeneratorType;
}

bool allows_cpu_indices(const c10::OperatorHandle& op, const c10::Argument& arg) {
  const std::string& name = op.schema().name();
  return arg.name() == "indices" && (name.rfind("aten::index", 0) == 0 || name == "aten::_index_put_impl_");
}

// Where CUDA takes a 0-dim CPU tensor: elementwise ops (TensorIterator's CPU scalars), the
// foreach ops' scalar tensor, and the fill value of the ops that read it with item().
bool allows_cpu_scalars(const c10::OperatorHandle& op, const c10::Argument& arg) {
  static const std::unordered_set<std::string> value_ops = {
      "aten::fill", "aten::fill_", "aten::masked_fill", "aten::masked_fill_", "aten::index_fill",
      "aten::index_fill_", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"};
  const std::string& name = op.schema().name();
  return op.hasTag(at::Tag::pointwise) || name.rfind("aten::_foreach_", 0) == 0 ||
         (arg.name() == "value" && value_ops.count(name) > 0);
}

// A tpu device argument (a factory's device=): where the results go, index kept.
c10::optional<c10::Device> device_argument(const torch::jit::Stack& stack, size_t first, size_t count) {
  for (size_t i = first; i < first + count; ++i) {
    if (stack[i].isDevice() && stack[i].toDevice().type() == kTpu) {
      c10::Device d = stack[i].toDevice();
      return c10::Device(kTpu, d.has_index() ? d.index() : current_device());
    }
  }
  return c10::nullopt;
}

}  // namespace

// The same IValue with every tensor in it (also inside lists) replaced by f(tensor).
c10::IValue map_tensors(const c10::IValue& v, const std::function<at::Tensor(const at::Tensor&)>& f) {
  if (v.isTensor()) return f(v.toTensor());
  if (v.isList()) {
    c10::List<IValue> list = v.toList();
    const c10::TypePtr& type = list.elementType();
    auto optional = type->cast<c10::OptionalType>();
    if (type->kind() != c10::TypeKind::TensorType &&
        !(optional && optional->getElementType()->kind() == c10::TypeKind::TensorType))
      return v;  // int[], float[], ...: nothing to map
    c10::impl::GenericList copy(type);
    copy.reserve(list.size());
    for (const IValue& item : list) copy.push_back(map_tensors(item, f));
    return copy;
  }
  return v;
}

bool is_write(const c10::Argument& arg) { return arg.alias_info() && arg.alias_info()->isWrite(); }

at::Tensor cpu_view(const at::Tensor& t) {
  if (!t.defined() || t.device().type() != kTpu) return t;
  return tensor_on(host_storage(t.storage()), kCpuKeys, t);
}

void cpu_fallback(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& schema = op.schema();
  const auto& arguments = schema.arguments();
  const size_t first = stack->size() - arguments.size();
  Call call(op);
  count_if_cpu_op(op);

  for (size_t i = 0; i < arguments.size(); ++i) {
    bool write = is_write(arguments[i]);
    bool cpu_ok = allows_cpu_indices(op, arguments[i]);
    bool scalar_ok = allows_cpu_scalars(op, arguments[i]);
    each_tensor((*stack)[first + i],
                [&](const at::Tensor& t) { call.check(t, arguments[i].name(), write, cpu_ok, scalar_ok); });
  }
  if (!call.pending_cpu.empty()) call.mixed(c10::Device(c10::kCPU), call.pending_cpu);
  if (auto explicit_device = device_argument(*stack, first, arguments.size())) call.device = *explicit_device;
  if (call.device.index() < 0) call.device = c10::Device(kTpu, current_device());

  torch::jit::Stack host;
  host.reserve(arguments.size());
  for (size_t i = 0; i < arguments.size(); ++i) {
    IValue& v = (*stack)[first + i];
    if (is_generator(arguments[i]) && v.isNone())
      host.push_back(cpu_generator_of(default_generator(call.device.index())));
    else
      host.push_back(call.to_host(v, is_write(arguments[i])));
  }
  torch::jit::drop(*stack, arguments.size());

  c10::DeviceGuard guard(call.device);
  torch::jit::Stack results = run_on_cpu(op, host);
  host.clear();
  call.sync_written();
  for (const IValue& v : results) call.count_refs(v);
  for (IValue& v : results) stack->push_back(call.to_device(v));
}

TORCH_LIBRARY_IMPL(_, PrivateUse1, m) { m.fallback(torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>()); }

// Ops with a CompositeExplicitAutograd kernel would run it on device tensors
// instead of the fallback: convolution would pick no backend ("convolution_
// overrideable not implemented"). Send it to the CPU kernel.
TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("convolution", torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
  m.impl("convolution_backward", torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
}

// Every op with a CPU kernel and also a composite one would take the
// composite path on the device: a different arithmetic (math_group_norm,
// math_mish_backward) or a detour through the out= variant (mse_loss: a
// resize warning). Point them all at the CPU kernel, so results are the CPU's.
// Called once the extension is loaded, when every aten op is registered.
void route_composites_to_cpu() {
  using c10::DispatchKey;
  static auto* lib = new torch::Library(torch::Library::IMPL, "aten", DispatchKey::PrivateUse1, __FILE__, __LINE__);
  auto& dispatcher = c10::Dispatcher::singleton();
  for (const c10::OperatorName& name : dispatcher.getAllOpNames()) {
    if (name.name.rfind("aten::", 0) != 0) continue;
    auto op = dispatcher.findOp(name);
    if (!op || !op->hasKernelForDispatchKey(DispatchKey::CPU) || op->hasKernelForDispatchKey(DispatchKey::PrivateUse1))
      continue;
    if (!op->hasKernelForDispatchKey(DispatchKey::CompositeExplicitAutograd) &&
        !op->hasKernelForDispatchKey(DispatchKey::CompositeExplicitAutogradNonFunctional) &&
        !op->hasKernelForDispatchKey(DispatchKey::CompositeImplicitAutograd))
      continue;
    std::string qualified = name.name.substr(6) + (name.overload_name.empty() ? "" : "." + name.overload_name);
    lib->impl(qualified.c_str(), torch::CppFunction::makeFromBoxedFunction<&cpu_fallback>());
  }
}

}  // namespace emu

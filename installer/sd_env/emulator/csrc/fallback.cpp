// Every op the device does not implement natively: run the CPU kernel on
// zero-copy CPU views of the device tensors, then map the results back
// (written arguments, views of arguments, new tensors).
//
// Unlike at::native::cpu_fallback this never copies inputs, refuses to mix
// devices the way CUDA does, swaps device generators for the CPU generators
// that make their draws, and runs CPU kernels that lack Half in float.
#include "emu.h"

#include <c10/core/CPUAllocator.h>
#include <ATen/core/enum_tag.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <mutex>
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

// The same IValue with every tensor in it (also inside lists) replaced by f(tensor).
IValue map_tensors(const IValue& v, const std::function<at::Tensor(const at::Tensor&)>& f) {
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

bool is_write(const c10::Argument& arg) { return arg.alias_info() && arg.alias_info()->isWrite(); }

bool is_generator(const c10::Argument& arg) {
  const c10::TypePtr& type = arg.type();
  if (type->kind() == c10::TypeKind::GeneratorType) return true;
  auto optional = type->cast<c10::OptionalType>();
  return optional && optional->getElementType()->kind() == c10::TypeKind::GeneratorType;
}

template <typename F>
void each_tensor(const IValue& v, F&& f) {
  if (v.isTensor()) {
    f(v.toTensor());
  } else if (v.isList()) {
    for (const IValue& item : v.toList()) each_tensor(item, f);
  }
}

bool any_half(const torch::jit::Stack& args) {
  bool found = false;
  for (const IValue& v : args)
    each_tensor(v, [&](const at::Tensor& t) { found = found || (t.defined() && t.scalar_type() == at::kHalf); });
  return found;
}

// Outputs CUDA gives in float for a Half input (its accumulate type) where the CPU kernel,
// or computing in float and rounding back, gives Half: the statistics of layer_norm.
const std::vector<size_t>* float_outputs(const c10::OperatorHandle& op) {
  static const std::unordered_map<std::string, std::vector<size_t>> table = {{"aten::native_layer_norm", {1, 2}}};
  auto found = table.find(op.schema().name());
  return found == table.end() ? nullptr : &found->second;
}

// Their backward's CPU kernel wants those statistics in the input's dtype (torch 2.8's Half layer_norm).
void statistics_as_input(const c10::OperatorHandle& op, torch::jit::Stack& args) {
  if (op.schema().name() != "aten::native_layer_norm_backward" || args.size() < 5 || !args[1].isTensor()) return;
  at::ScalarType input = args[1].toTensor().scalar_type();
  if (input != at::kHalf && input != at::kBFloat16) return;
  for (size_t i : {3, 4})
    if (args[i].isTensor() && args[i].toTensor().scalar_type() != input) args[i] = args[i].toTensor().to(input);
}

bool kept(const std::vector<size_t>* outputs, size_t i) {
  return outputs && std::find(outputs->begin(), outputs->end(), i) != outputs->end();
}

// CPU kernels lacking Half (many in torch 2.1): compute in float, round to Half.
torch::jit::Stack run_in_float(const c10::OperatorHandle& op, const torch::jit::Stack& args) {
  std::vector<std::pair<at::Tensor, at::Tensor>> widened;  // (float copy, half original)
  torch::jit::Stack stack;
  const auto& schema_args = op.schema().arguments();
  for (size_t i = 0; i < args.size(); ++i) {
    const IValue& v = args[i];
    // A dtype argument saying Half (e.g. _softmax_backward_data's input_dtype in an fp16
    // backward) must say Float too, or the kernel rejects its own float output.
    if (v.isInt() && v.toInt() == static_cast<int64_t>(at::kHalf) && i < schema_args.size() &&
        schema_args[i].real_type()->str().rfind("ScalarType", 0) == 0) {
      stack.push_back(IValue(static_cast<int64_t>(at::kFloat)));
      continue;
    }
    stack.push_back(map_tensors(v, [&](const at::Tensor& t) {
      if (!t.defined() || t.scalar_type() != at::kHalf) return t;
      at::Tensor wide = t.to(at::kFloat);
      widened.emplace_back(wide, t);
      return wide;
    }));
  }
  op.redispatchBoxed(kCpuKeys, &stack);
  std::unordered_map<c10::TensorImpl*, at::Tensor> back;
  for (auto& [wide, half] : widened) back.emplace(wide.unsafeGetTensorImpl(), half);
  // Write back only what the op wrote (its written arguments are returned or mutable).
  const auto& arguments = op.schema().arguments();
  for (size_t i = 0; i < arguments.size(); ++i) {
    if (!is_write(arguments[i])) continue;
    each_tensor(args[i], [&](const at::Tensor& half) {
      for (auto& [wide, orig] : widened) {
        if (!orig.is_same(half)) continue;
        if (half.sizes() != wide.sizes()) half.resize_(wide.sizes());  // an out= the op resized
        half.copy_(wide);
      }
    });
  }
  const std::vector<size_t>* stay_float = float_outputs(op);
  for (size_t i = 0; i < stack.size(); ++i) {
    stack[i] = map_tensors(stack[i], [&](const at::Tensor& t) {
      auto found = t.defined() ? back.find(t.unsafeGetTensorImpl()) : back.end();
      if (found != back.end()) return found->second;
      return t.defined() && t.scalar_type() == at::kFloat && !kept(stay_float, i) ? t.to(at::kHalf) : t;
    });
  }
  return stack;
}

// Ops whose CPU kernel lacks Half, learnt from their first failure: that failure's
// c10::Error records a symbolized backtrace, which costs far more than the op itself,
// so paying it on every fp16 call made an fp16 training step several times slower.
std::mutex lacks_half_mutex;
std::unordered_set<c10::OperatorName> lacks_half_ops;

// The matmul family in Half: the CPU kernels that have it (torch 2.8's conv2d, mm) are 30-100x
// slower than float ones on a CPU without fp16 arithmetic, so a Half step took 4x a float one.
// Computed in float and rounded once, as a device's fp16 units accumulate in float anyway.
bool matmul_family(const c10::OperatorHandle& op) {
  static const std::unordered_set<std::string> names = {
      "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution", "aten::convolution_backward"};
  return names.count(op.schema().name()) > 0;
}

bool lacks_half(const c10::OperatorHandle& op) {
  if (matmul_family(op)) return true;
  std::lock_guard<std::mutex> lock(lacks_half_mutex);
  return lacks_half_ops.count(op.operator_name()) > 0;
}

void remember_lacks_half(const c10::OperatorHandle& op) {
  std::lock_guard<std::mutex> lock(lacks_half_mutex);
  lacks_half_ops.insert(op.operator_name());
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
  torch::jit::Stack results = host;
  if (lacks_half(op) && any_half(host)) {
    results = run_in_float(op, host);
  } else {
    try {
      statistics_as_input(op, results);
      op.redispatchBoxed(kCpuKeys, &results);
    } catch (const c10::Error& e) {
      if (std::string(e.what()).find("for 'Half'") == std::string::npos || !any_half(host)) throw;
      remember_lacks_half(op);
      results = run_in_float(op, host);
    }
  }
  const std::vector<size_t>* stay_float = float_outputs(op);
  if (stay_float && any_half(host)) {
    for (size_t i : *stay_float) {
      if (i < results.size() && results[i].isTensor() && results[i].toTensor().scalar_type() == at::kHalf)
        results[i] = results[i].toTensor().to(at::kFloat);
    }
  }
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

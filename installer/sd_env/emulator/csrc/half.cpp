// Half on the CPU kernels: computed in float and rounded once where the CPU
// kernel lacks Half (many in torch 2.1) and for the matmul family (whose
// torch 2.8 CPU Half kernels are 30-100x slower than float ones), with the
// statistics CUDA keeps in float kept so.
#include "ivalues.h"

#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace emu {
namespace {

using c10::IValue;

const c10::DispatchKeySet kCpuKeys(c10::DispatchKey::CPU);

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

}  // namespace

torch::jit::Stack run_on_cpu(const c10::OperatorHandle& op, const torch::jit::Stack& host) {
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
  return results;
}

}  // namespace emu

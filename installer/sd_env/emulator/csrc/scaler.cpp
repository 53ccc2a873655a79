// The two kernels behind GradScaler. torch 2.1 has them for CUDA only, so a
// device that wants the CUDA scaler's behaviour implements them itself.
#include "emu.h"

#include <torch/library.h>

namespace emu {
namespace {

void same_device(const at::Tensor& t, const at::Tensor& found_inf) {
  TORCH_CHECK(t.device() == found_inf.device(), "Expected all tensors to be on the same device, but found at least "
              "two devices, ", found_inf.device(), " and ", t.device(), "!");
}

// found_inf = 1 if any gradient holds inf or nan; every gradient *= inv_scale.
void non_finite_check_and_unscale(at::TensorList grads, at::Tensor& found_inf, const at::Tensor& inv_scale) {
  TORCH_CHECK(inv_scale.numel() == 1, "inv_scale must be a 1-element tensor.");
  TORCH_CHECK(found_inf.numel() == 1, "found_inf must be a 1-element tensor.");
  TORCH_CHECK(inv_scale.scalar_type() == at::kFloat, "inv_scale must be a float tensor.");
  TORCH_CHECK(found_inf.scalar_type() == at::kFloat, "found_inf must be a float tensor.");
  same_device(inv_scale, found_inf);
  at::Tensor found = cpu_view(found_inf);
  at::Tensor inv = cpu_view(inv_scale);
  for (const at::Tensor& grad : grads) {
    same_device(grad, found_inf);
    TORCH_CHECK(grad.layout() == at::kStrided, "one of scaled_grads was not a strided tensor.");
    at::Tensor g = cpu_view(grad);
    if (!g.isfinite().all().item<bool>()) found.fill_(1.0);
    if (g.scalar_type() == at::kFloat || g.scalar_type() == at::kDouble)
      g.mul_(inv);
    else  // as CUDA does: multiply in float, round once
      g.copy_(g.to(at::kFloat).mul_(inv));
  }
}

at::Tensor& update_scale(at::Tensor& scale, at::Tensor& growth_tracker, const at::Tensor& found_inf, double growth,
                         double backoff, int64_t interval) {
  TORCH_CHECK(growth_tracker.scalar_type() == at::kInt, "growth_tracker must be an int tensor.");
  TORCH_CHECK(scale.scalar_type() == at::kFloat, "current_scale must be a float tensor.");
  TORCH_CHECK(found_inf.scalar_type() == at::kFloat, "found_inf must be a float tensor.");
  same_device(growth_tracker, scale);
  same_device(found_inf, scale);
  float* s = cpu_view(scale).data_ptr<float>();
  int* tracker = cpu_view(growth_tracker).data_ptr<int>();
  if (*cpu_view(found_inf).data_ptr<float>() != 0.0f) {
    *s *= static_cast<float>(backoff);
    *tracker = 0;
  } else {
    int successful = *tracker + 1;
    if (successful == interval) {
      float grown = *s * static_cast<float>(growth);
      if (std::isfinite(grown)) *s = grown;  // never grow into inf
      *tracker = 0;
    } else {
      *tracker = successful;
    }
  }
  return scale;
}

}  // namespace

TORCH_LIBRARY_IMPL(aten, PrivateUse1, m) {
  m.impl("_amp_foreach_non_finite_check_and_unscale_", &non_finite_check_and_unscale);
  m.impl("_amp_update_scale_", &update_scale);
}

}  // namespace emu

// torch.autocast("tpu"): the matmul family runs in the autocast dtype, as
// Sophgo registers it for AutocastPrivateUse1; the norms and softmax run in
// float as on CUDA, so fp16 activations meet fp32 weights the usual way.
#include "emu.h"

#include <ATen/autocast_mode.h>
#include <torch/library.h>

namespace emu {

TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) { m.fallback(torch::CppFunction::makeFallthrough()); }

TORCH_LIBRARY_IMPL(aten, AutocastPrivateUse1, m) {
  KERNEL_PRIVATEUSEONE(mm, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(addmm, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(bmm, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(baddbmm, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(matmul, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(linear, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(conv1d, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(conv2d, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(conv3d, lower_precision_fp)
  KERNEL_PRIVATEUSEONE2(conv1d, padding, lower_precision_fp)
  KERNEL_PRIVATEUSEONE2(conv2d, padding, lower_precision_fp)
  KERNEL_PRIVATEUSEONE2(conv3d, padding, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(convolution, lower_precision_fp)
  KERNEL_PRIVATEUSEONE(group_norm, fp32)
  KERNEL_PRIVATEUSEONE(layer_norm, fp32)
  KERNEL_PRIVATEUSEONE2(softmax, int, fp32)
  KERNEL_PRIVATEUSEONE2(log_softmax, int, fp32)
  KERNEL_PRIVATEUSEONE(mse_loss, fp32)
}

}  // namespace emu

// torch.autocast("tpu").
// torch 2.1 era: the matmul family runs in the autocast dtype, as Sophgo
// registers it for AutocastPrivateUse1 (mm, addmm, matmul); the norms and
// softmax run in float as on CUDA, so fp16 activations meet fp32 weights the
// usual way.
// torch 2.8 era: nothing is cast. Sophgo commented every AutocastPrivateUse1
// kernel out ("forbid autocast, will use env control", c684fe01, 2025-09-12,
// torch_tpu/csrc/ops/autocast_ops/autocast_ops.cpp): autocast on "tpu" is on
// but changes no dtype, and neither does torch itself register any for it.
#include "emu.h"

#include <torch/library.h>

namespace emu {

TORCH_LIBRARY_IMPL(_, AutocastPrivateUse1, m) { m.fallback(torch::CppFunction::makeFallthrough()); }

#if !EMU_TORCH_28
TORCH_LIBRARY_IMPL(aten, AutocastPrivateUse1, m) {
  EMU_AUTOCAST(mm, lower_precision_fp)
  EMU_AUTOCAST(addmm, lower_precision_fp)
  EMU_AUTOCAST(bmm, lower_precision_fp)
  EMU_AUTOCAST(baddbmm, lower_precision_fp)
  EMU_AUTOCAST(matmul, lower_precision_fp)
  EMU_AUTOCAST(linear, lower_precision_fp)
  EMU_AUTOCAST(conv1d, lower_precision_fp)
  EMU_AUTOCAST(conv2d, lower_precision_fp)
  EMU_AUTOCAST(conv3d, lower_precision_fp)
  EMU_AUTOCAST2(conv1d, padding, lower_precision_fp)
  EMU_AUTOCAST2(conv2d, padding, lower_precision_fp)
  EMU_AUTOCAST2(conv3d, padding, lower_precision_fp)
  EMU_AUTOCAST(convolution, lower_precision_fp)
  EMU_AUTOCAST(group_norm, fp32)
  EMU_AUTOCAST(layer_norm, fp32)
  EMU_AUTOCAST2(softmax, int, fp32)
  EMU_AUTOCAST2(log_softmax, int, fp32)
  EMU_AUTOCAST(mse_loss, fp32)
}
#endif

}  // namespace emu

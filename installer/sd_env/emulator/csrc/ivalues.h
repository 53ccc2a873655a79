// The IValue helpers the fallback and the Half handling share.
#pragma once

#include "emu.h"

#include <functional>

namespace emu {

// The same IValue with every tensor in it (also inside lists) replaced by f(tensor).
c10::IValue map_tensors(const c10::IValue& v, const std::function<at::Tensor(const at::Tensor&)>& f);

bool is_write(const c10::Argument& arg);

template <typename F>
void each_tensor(const c10::IValue& v, F&& f) {
  if (v.isTensor()) {
    f(v.toTensor());
  } else if (v.isList()) {
    for (const c10::IValue& item : v.toList()) each_tensor(item, f);
  }
}

}  // namespace emu

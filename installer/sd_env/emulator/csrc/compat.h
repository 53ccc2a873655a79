// Everything that differs between the two torch eras the emulator builds for:
// torch 2.1 (torch_tpu 2.1.0.post1, the tutorial's stack) and torch 2.8
// (torch_tpu 2.8.0.post1, Sophgo's current stack). The rest of the C++ is
// written once against these names.
#pragma once

#include <ATen/autocast_mode.h>
#include <torch/version.h>

#if TORCH_VERSION_MAJOR != 2 || (TORCH_VERSION_MINOR != 1 && TORCH_VERSION_MINOR != 8)
#error "the tpu emulator builds against torch 2.1 or 2.8 (the torch_tpu eras it emulates)"
#endif

#define EMU_TORCH_28 (TORCH_VERSION_MINOR == 8)

#if EMU_TORCH_28
// c10::Allocator::allocate lost its const, and copy_data became pure virtual.
#define EMU_ALLOCATE_CONST
#define EMU_ALLOCATOR_COPY_DATA \
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
// PrivateUse1HooksInterface's methods became const; a few more must be given.
#define EMU_HOOKS_CONST const
#define EMU_HOOKS_EXTRA                                                            \
  bool isBuilt() const override { return true; }                                  \
  bool isAvailable() const override { return true; }                              \
  bool hasPrimaryContext(c10::DeviceIndex) const override { return true; }        \
  void resizePrivateUse1Bytes(const c10::Storage& storage, size_t newsize) const override { \
    resize_bytes(storage, newsize);                                                \
  }
// (No autocast kernels: the 2.8-era plugin registers none, see autocast.cpp.)
#else
#define EMU_ALLOCATE_CONST const
#define EMU_ALLOCATOR_COPY_DATA
#define EMU_HOOKS_CONST
#define EMU_HOOKS_EXTRA
#define EMU_AUTOCAST(OP, POLICY) KERNEL_PRIVATEUSEONE(OP, POLICY)
#define EMU_AUTOCAST2(OP, OVERLOAD, POLICY) KERNEL_PRIVATEUSEONE2(OP, OVERLOAD, POLICY)
#endif

namespace emu::compat {

// The autocast state of the PrivateUse1 device ("tpu").
inline bool autocast_enabled() {
#if EMU_TORCH_28
  return at::autocast::is_autocast_enabled(at::kPrivateUse1);
#else
  return at::autocast::is_privateuseone_enabled();
#endif
}

inline void set_autocast_enabled(bool on) {
#if EMU_TORCH_28
  at::autocast::set_autocast_enabled(at::kPrivateUse1, on);
#else
  at::autocast::set_privateuseone_enabled(on);
#endif
}

inline at::ScalarType autocast_dtype() {
#if EMU_TORCH_28
  return at::autocast::get_autocast_dtype(at::kPrivateUse1);
#else
  return at::autocast::get_autocast_privateuseone_dtype();
#endif
}

inline void set_autocast_dtype(at::ScalarType dtype) {
#if EMU_TORCH_28
  at::autocast::set_autocast_dtype(at::kPrivateUse1, dtype);
#else
  at::autocast::set_autocast_privateuseone_dtype(dtype);
#endif
}

}  // namespace emu::compat

// Device memory: host memory, but accounted per device like the card's
// allocator does, with an optional capacity past which an allocation fails
// the way the card's does.
//
// Every byte that becomes "tpu" memory passes through charge(): a fresh
// allocation (empty, resize_, copies) and the host memory a CPU kernel wrote
// its result into, which the fallback adopts without copying (adopt()).
#include "emu.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <array>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <sstream>

namespace emu {
namespace {

constexpr int kMaxDevices = 8;

struct Counter {
  int64_t current = 0, peak = 0, allocated = 0, freed = 0;
  void add(int64_t n) {
    current += n;
    allocated += n;
    peak = std::max(peak, current);
  }
  void sub(int64_t n) {
    current -= n;
    freed += n;
  }
};

struct DeviceMemory {
  Counter bytes;      // what the device gives out (rounded as the card rounds)
  Counter requested;  // what was asked for
  Counter blocks;     // how many allocations
  int64_t ooms = 0;
  int64_t capacity = 0;  // 0: no limit
};

std::mutex mutex;
std::array<DeviceMemory, kMaxDevices> devices;

// The 2.8-era plugin rounds every allocation up to TPU_ALLOCATOR_ALIGN_SIZE
// (default 1 MiB, TPUDeviceManager.cpp): many small tensors cost a MiB each.
// The 2.1-era one hands sizes to bm_malloc_device_byte as they are.
int64_t rounded(int64_t nbytes) {
#if EMU_TORCH_28
  static const int64_t align = [] {
    const char* env = std::getenv("TPU_ALLOCATOR_ALIGN_SIZE");
    int64_t n = env && *env ? std::atoll(env) : 0x100000;
    return n > 0 ? n : 1;
  }();
  return (nbytes + align - 1) / align * align;
#else
  return nbytes;
#endif
}

std::string gib(int64_t n) {
  std::ostringstream out;
  out.precision(3);
  out << static_cast<double>(n) / (1 << 30) << " GiB";
  return out.str();
}

[[noreturn]] void out_of_memory(c10::DeviceIndex index, int64_t size, const DeviceMemory& mem) {
  std::ostringstream emulated;
  emulated << " (sd-env emulation: " << gib(mem.bytes.current) << " of the " << gib(mem.capacity)
           << " capacity in use on tpu:" << static_cast<int>(index) << ", set by SD_ENV_EMULATED_MEMORY or the "
           << "manifest's [emulator] memory)";
#if EMU_TORCH_28
  // TPUDeviceManager.cpp: a retry after emptying the cache, then this check.
  std::cout << "First allocation failed, trying to free cache and retry. Device: #" << static_cast<int>(index)
            << " Size: " << size << "bytes" << std::endl;
  const char* delay = std::getenv("TPU_ALLOCATOR_FREE_DELAY_IN_MS");
  TORCH_CHECK(false, "Failed to allocate memory on TPU device #", static_cast<int>(index), " size = ", size,
              " bytes. If OOM, please try lowering the environment variable 'TPU_ALLOCATOR_FREE_DELAY_IN_MS' and "
              "current value is ", delay ? delay : "0", "ms. ", emulated.str());
#else
  TORCH_CHECK(false, "Failed to allocate memory on TPU device #", static_cast<int>(index), " size = ", size, "bytes",
              emulated.str());
#endif
}

// What one device allocation counted; the context of its DataPtr.
struct Block {
  c10::DataPtr host;
  int64_t charged, requested;
  c10::DeviceIndex device;
};

void release(void* context) {
  auto* block = static_cast<Block*>(context);
  {
    std::lock_guard<std::mutex> lock(mutex);
    DeviceMemory& mem = devices[block->device];
    mem.bytes.sub(block->charged);
    mem.requested.sub(block->requested);
    mem.blocks.sub(1);
  }
  delete block;  // its host DataPtr frees the memory
}

DeviceMemory& memory_of(c10::DeviceIndex index) {
  TORCH_CHECK(index >= 0 && index < kMaxDevices, "no emulated device tpu:", static_cast<int>(index));
  return devices[index];
}

// Count `nbytes` on `index`, or fail as the card does when the capacity is exceeded.
int64_t charge(c10::DeviceIndex index, int64_t nbytes) {
  check_allocation(index, nbytes);  // the strict profile's rules on single allocations
  int64_t charged = rounded(nbytes);
  std::unique_lock<std::mutex> lock(mutex);
  DeviceMemory& mem = memory_of(index);
  if (mem.capacity > 0 && mem.bytes.current + charged > mem.capacity) {
    mem.ooms++;
    DeviceMemory copy = mem;
    lock.unlock();
    out_of_memory(index, charged, copy);
  }
  mem.bytes.add(charged);
  mem.requested.add(nbytes);
  mem.blocks.add(1);
  return charged;
}

c10::DataPtr tracked(c10::DataPtr host, int64_t nbytes, int64_t charged, c10::DeviceIndex index) {
  void* ptr = host.get();
  auto* block = new Block{std::move(host), charged, nbytes, index};
  return {ptr, block, &release, c10::Device(kTpu, index)};
}

struct TpuAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t nbytes) EMU_ALLOCATE_CONST override {
    c10::DeviceIndex index = current_device();
    if (nbytes == 0) return {nullptr, nullptr, &c10::detail::deleteNothing, c10::Device(kTpu, index)};
    int64_t charged = charge(index, static_cast<int64_t>(nbytes));
    void* ptr = c10::alloc_cpu(nbytes);
    return tracked(c10::DataPtr(ptr, ptr, &c10::free_cpu, c10::Device(c10::kCPU)), static_cast<int64_t>(nbytes),
                   charged, index);
  }
  EMU_ALLOCATOR_COPY_DATA
};

TpuAllocator tpu_allocator;

}  // namespace

REGISTER_ALLOCATOR(c10::DeviceType::PrivateUse1, &tpu_allocator);

c10::Allocator* allocator() { return &tpu_allocator; }

c10::DataPtr adopt(c10::DataPtr host, size_t nbytes, c10::DeviceIndex index) {
  if (nbytes == 0 || host.get() == nullptr) {
    host.unsafe_set_device(c10::Device(kTpu, index));
    return host;
  }
  int64_t charged = charge(index, static_cast<int64_t>(nbytes));
  return tracked(std::move(host), static_cast<int64_t>(nbytes), charged, index);
}

void resize_bytes(const c10::Storage& storage, size_t nbytes) {
  c10::StorageImpl* impl = storage.unsafeGetStorageImpl();
  TORCH_CHECK(impl->resizable(), "Trying to resize storage that is not resizable");
  c10::DeviceGuard guard(storage.device());
  c10::DataPtr data = nbytes ? allocator()->allocate(nbytes) : allocator()->allocate(0);
  size_t keep = std::min(nbytes, impl->nbytes());
  if (keep) std::memcpy(data.get(), impl->data(), keep);
  impl->set_data_ptr_noswap(std::move(data));
  impl->set_nbytes(nbytes);
}

MemoryStats memory_stats(c10::DeviceIndex index) {
  std::lock_guard<std::mutex> lock(mutex);
  const DeviceMemory& mem = memory_of(index);
  auto four = [](const Counter& c) { return std::array<int64_t, 4>{c.current, c.peak, c.allocated, c.freed}; };
  return {four(mem.bytes), four(mem.requested), four(mem.blocks), mem.ooms, mem.capacity};
}

void reset_peak(c10::DeviceIndex index) {
  std::lock_guard<std::mutex> lock(mutex);
  DeviceMemory& mem = memory_of(index);
  for (Counter* c : {&mem.bytes, &mem.requested, &mem.blocks}) c->peak = c->current;
}

void reset_accumulated(c10::DeviceIndex index) {
  std::lock_guard<std::mutex> lock(mutex);
  DeviceMemory& mem = memory_of(index);
  for (Counter* c : {&mem.bytes, &mem.requested, &mem.blocks}) c->allocated = c->freed = 0;
  mem.ooms = 0;
}

void set_capacity(c10::DeviceIndex index, int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex);
  memory_of(index).capacity = std::max<int64_t>(bytes, 0);
}

}  // namespace emu

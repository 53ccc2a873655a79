// The emulated "sccl" c10d backend: Sophgo's collective backend for "tpu" tensors.
//
// Sophgo's first one (collective_extension, August 2023, module sccl_collectives)
// was ProcessGroupGloo's code taught the PrivateUse1 device: it ran gloo on host
// copies of the device tensors, and its commit notes int64 is not supported by
// the backend. Here device memory is host memory, so this backend hands gloo
// zero-copy CPU views of the "tpu" tensors (gloo reads and writes the device
// memory itself) and refuses int64 "tpu" tensors as the real one does. CPU tensors (a
// barrier's, a CPU all-reduce) go to gloo as they are: one process group
// serves both devices, as ProcessGroupSCCL does.
#include <pybind11/pybind11.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/utils/pybind.h>
#include <torch/library.h>

#include "emu.h"

namespace emu {
namespace {

using c10d::Work;
using Tensors = std::vector<at::Tensor>;
using TensorLists = std::vector<std::vector<at::Tensor>>;

void refuse_int64(const char* what, const at::Tensor& t) {
  TORCH_CHECK(t.device().type() != kTpu || t.scalar_type() != at::kLong, "ProcessGroupSCCL::", what,
              ": int64 (torch.int64) tensors are not supported by the sccl backend; use int32 or float "
              "(Sophgo's sccl, like its device, has no int64)");
}

Tensors host(const char* what, const Tensors& tensors) {
  Tensors out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) {
    refuse_int64(what, t);
    out.push_back(cpu_view(t));
  }
  return out;
}

TensorLists host(const char* what, const TensorLists& lists) {
  TensorLists out;
  out.reserve(lists.size());
  for (const auto& list : lists) out.push_back(host(what, list));
  return out;
}

at::Tensor host(const char* what, const at::Tensor& t) {
  refuse_int64(what, t);
  return cpu_view(t);
}

class ProcessGroupSCCL final : public c10d::Backend {
 public:
  ProcessGroupSCCL(c10::intrusive_ptr<c10d::Backend> gloo, int rank, int size)
      : c10d::Backend(rank, size), gloo_(std::move(gloo)) {}

  const std::string getBackendName() const override { return "sccl"; }

  c10::intrusive_ptr<Work> broadcast(Tensors& tensors, const c10d::BroadcastOptions& opts) override {
    auto h = host("broadcast", tensors);
    return gloo_->broadcast(h, opts);
  }
  c10::intrusive_ptr<Work> allreduce(Tensors& tensors, const c10d::AllreduceOptions& opts) override {
    auto h = host("allreduce", tensors);
    return gloo_->allreduce(h, opts);
  }
  c10::intrusive_ptr<Work> allreduce_coalesced(Tensors& tensors,
                                               const c10d::AllreduceCoalescedOptions& opts) override {
    auto h = host("allreduce_coalesced", tensors);
    return gloo_->allreduce_coalesced(h, opts);
  }
  c10::intrusive_ptr<Work> reduce(Tensors& tensors, const c10d::ReduceOptions& opts) override {
    auto h = host("reduce", tensors);
    return gloo_->reduce(h, opts);
  }
  c10::intrusive_ptr<Work> allgather(TensorLists& outputs, Tensors& inputs,
                                     const c10d::AllgatherOptions& opts) override {
    auto o = host("allgather", outputs);
    auto i = host("allgather", inputs);
    return gloo_->allgather(o, i, opts);
  }
  c10::intrusive_ptr<Work> _allgather_base(at::Tensor& output, at::Tensor& input,
                                           const c10d::AllgatherOptions& opts) override {
    auto o = host("_allgather_base", output);
    auto i = host("_allgather_base", input);
    return gloo_->_allgather_base(o, i, opts);
  }
  c10::intrusive_ptr<Work> gather(TensorLists& outputs, Tensors& inputs, const c10d::GatherOptions& opts) override {
    auto o = host("gather", outputs);
    auto i = host("gather", inputs);
    return gloo_->gather(o, i, opts);
  }
  c10::intrusive_ptr<Work> scatter(Tensors& outputs, TensorLists& inputs, const c10d::ScatterOptions& opts) override {
    auto o = host("scatter", outputs);
    auto i = host("scatter", inputs);
    return gloo_->scatter(o, i, opts);
  }
  c10::intrusive_ptr<Work> reduce_scatter(Tensors& outputs, TensorLists& inputs,
                                          const c10d::ReduceScatterOptions& opts) override {
    auto o = host("reduce_scatter", outputs);
    auto i = host("reduce_scatter", inputs);
    return gloo_->reduce_scatter(o, i, opts);
  }
  c10::intrusive_ptr<Work> alltoall_base(at::Tensor& output, at::Tensor& input, std::vector<int64_t>& out_sizes,
                                         std::vector<int64_t>& in_sizes, const c10d::AllToAllOptions& opts) override {
    auto o = host("alltoall_base", output);
    auto i = host("alltoall_base", input);
    return gloo_->alltoall_base(o, i, out_sizes, in_sizes, opts);
  }
  c10::intrusive_ptr<Work> send(Tensors& tensors, int dst, int tag) override {
    auto h = host("send", tensors);
    return gloo_->send(h, dst, tag);
  }
  c10::intrusive_ptr<Work> recv(Tensors& tensors, int src, int tag) override {
    auto h = host("recv", tensors);
    return gloo_->recv(h, src, tag);
  }
  c10::intrusive_ptr<Work> recvAnysource(Tensors& tensors, int tag) override {
    auto h = host("recvAnysource", tensors);
    return gloo_->recvAnysource(h, tag);
  }
  c10::intrusive_ptr<Work> barrier(const c10d::BarrierOptions& opts) override { return gloo_->barrier(opts); }

 private:
  c10::intrusive_ptr<c10d::Backend> gloo_;
};

}  // namespace

// torch (2.1 and 2.8 alike) gives the Autograd keys of CPU, CUDA, XLA, ... a fallback for ops
// without autograd kernels (VariableFallbackKernel.cpp) but not AutogradPrivateUse1's, so
// c10d::allreduce_ on a "tpu" tensor stopped there. A fallthrough, as a plugin registers; aten
// ops keep their own autograd kernels (a kernel wins over a fallback).
TORCH_LIBRARY_IMPL(_, AutogradPrivateUse1, m) { m.fallback(torch::CppFunction::makeFallthrough()); }

void bind_sccl(pybind11::module_& m) {
  m.def("process_group_sccl",
        [](c10::intrusive_ptr<c10d::Backend> gloo, int rank, int size) -> c10::intrusive_ptr<c10d::Backend> {
          return c10::make_intrusive<ProcessGroupSCCL>(std::move(gloo), rank, size);
        },
        "the emulated sccl backend over a ProcessGroupGloo of the same store, rank and size");
}

}  // namespace emu

// libtorch's multi-tensor optimiser and AMP kernels for petal. tch does not bind them (its
// generator skips ops taking lists of tensors to mutate), so this shim does, with C linkage.
// A tch tensor is a pointer to an `at::Tensor`. Every function returns 0, or 1 with the
// exception's message in `err`.
#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_amp_update_scale.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include <cstdio>
#include <optional>
#include <vector>

namespace {
std::vector<at::Tensor> list(void** p, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; i++) v.push_back(*static_cast<at::Tensor*>(p[i]));
  return v;
}

template <typename F>
int guarded(char* err, int err_len, F f) {
  try {
    f();
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, err_len, "%s", e.what());
    return 1;
  }
}
}  // namespace

extern "C" {
// at::_fused_adam_, or at::_fused_adamw_ (decoupled weight decay) when `adamw` (no amsgrad, no
// maximize); `found_inf` may be null.
int petal_fused_adam(void** params, void** grads, void** exp_avgs, void** exp_avg_sqs, void** steps, int n, double lr,
                     double beta1, double beta2, double weight_decay, double eps, int adamw, void* found_inf, char* err,
                     int err_len) {
  return guarded(err, err_len, [&] {
    std::optional<at::Tensor> fi;
    if (found_inf) fi = *static_cast<at::Tensor*>(found_inf);
    auto ps = list(params, n), gs = list(grads, n), ms = list(exp_avgs, n), vs = list(exp_avg_sqs, n);
    auto ts = list(steps, n);
    if (adamw) {
      at::_fused_adamw_(ps, gs, ms, vs, {}, ts, lr, beta1, beta2, weight_decay, eps, false, false, std::nullopt, fi);
    } else {
      at::_fused_adam_(ps, gs, ms, vs, {}, ts, lr, beta1, beta2, weight_decay, eps, false, false, std::nullopt, fi);
    }
  });
}

// Forgets the gradients of `n` tensors (PyTorch's `zero_grad(set_to_none=True)`): the next
// backward writes fresh gradients instead of adding to zeroed ones.
int petal_clear_grads(void** tensors, int n, char* err, int err_len) {
  return guarded(err, err_len, [&] {
    for (int i = 0; i < n; i++) static_cast<at::Tensor*>(tensors[i])->mutable_grad().reset();
  });
}

// Multiplies every gradient by `inv_scale` and sets `found_inf` to 1 if any is not finite.
int petal_amp_unscale(void** grads, int n, void* found_inf, void* inv_scale, char* err, int err_len) {
  return guarded(err, err_len, [&] {
    at::_amp_foreach_non_finite_check_and_unscale_(list(grads, n), *static_cast<at::Tensor*>(found_inf),
                                                    *static_cast<at::Tensor*>(inv_scale));
  });
}

// GradScaler's update: back off on overflow, grow after `interval` good steps.
int petal_amp_update_scale(void* scale, void* growth_tracker, void* found_inf, double growth, double backoff,
                           long interval, char* err, int err_len) {
  return guarded(err, err_len, [&] {
    at::_amp_update_scale_(*static_cast<at::Tensor*>(scale), *static_cast<at::Tensor*>(growth_tracker),
                           *static_cast<at::Tensor*>(found_inf), growth, backoff, interval);
  });
}
}

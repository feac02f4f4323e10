// bf16 autocast on the CPU for petal. tch's `autocast` only switches CUDA's autocast and does
// nothing without a GPU, so this shim does the CPU's, with C linkage. Autocast state is per
// thread: `enter` and `exit` pair up on the thread that runs the forward pass.
#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>

extern "C" {

// 1 when the CPU has AMX-BF16 tiles and the kernel lets this process use them (oneDNN then runs
// bf16 convolutions and matrix products on AMX), else 0.
int petal_cpu_amx_bf16() {
  try {
    if (!at::cpu::init_amx()) return 0;
    auto caps = at::cpu::get_cpu_capabilities();
    auto it = caps.find("amx_bf16");
    return it != caps.end() && it->second.isBool() && it->second.toBool() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

// Turns the CPU's autocast (to bfloat16) on for this thread; returns whether it was on.
int petal_cpu_autocast_enter() {
  int was = at::autocast::is_autocast_enabled(at::kCPU) ? 1 : 0;
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
  at::autocast::set_autocast_enabled(at::kCPU, true);
  at::autocast::increment_nesting();
  return was;
}

// Undoes `petal_cpu_autocast_enter`, given what it returned; the outermost exit drops the
// autocast cache of bf16 weight copies.
void petal_cpu_autocast_exit(int was) {
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(at::kCPU, was != 0);
}
}

//! The number format a training run computes in. Mixed precision keeps float32 weights,
//! gradients and optimiser state, and runs the forward pass's convolutions and matrix products in
//! half precision under autocast (their backward follows):
//! - on CUDA, float16 with dynamic loss scaling (torch.amp's recipe);
//! - on the CPU, bfloat16 (float32's exponent range, so no loss scaling), through the shim in
//!   csrc/cpu_autocast.cpp. It pays where oneDNN runs it on AMX units and the network is made of
//!   dense convolutions: the ResNets' steps are 2× faster on a Xeon with AMX-BF16, VGG16's 3×,
//!   while MobileNetV2's and EfficientNet-B0's depthwise convolutions gain nothing or lose in
//!   bfloat16 (BENCHMARKS.md). So by default it is on for dense networks on CPUs with AMX-BF16 only.
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use tch::Device;

use crate::train::arch::Arch;

extern "C" {
    fn petal_cpu_amx_bf16() -> std::ffi::c_int;
    fn petal_cpu_autocast_enter() -> std::ffi::c_int;
    fn petal_cpu_autocast_exit(was: std::ffi::c_int);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    Float32,
    /// float16 autocast with dynamic loss scaling (CUDA).
    Float16,
    /// bfloat16 autocast (the CPU).
    Bfloat16,
}

impl Precision {
    /// What a run on `device` computes in: mixed precision when `mixed` says so, else when it
    /// pays — always on CUDA; on the CPU for networks without grouped convolutions where the CPU
    /// has AMX-BF16 ([`cpu_amx_bf16`]).
    pub fn choose(mixed: Option<bool>, device: Device, arch: Arch) -> Precision {
        let cuda = device.is_cuda();
        let mixed = mixed.unwrap_or_else(|| cuda || (cpu_amx_bf16() && !arch.network(1).has_grouped_convolutions()));
        match (mixed, cuda) {
            (false, _) => Precision::Float32,
            (true, true) => Precision::Float16,
            (true, false) => Precision::Bfloat16,
        }
    }

    pub fn is_mixed(self) -> bool {
        self != Precision::Float32
    }

    /// Whether the loss is scaled before backward (float16's narrow range).
    pub fn scales_loss(self) -> bool {
        self == Precision::Float16
    }

    /// Runs `f` (a forward pass) under this precision's autocast, on this thread.
    pub fn autocast<T>(self, f: impl FnOnce() -> T) -> T {
        match self {
            Precision::Float32 => f(),
            Precision::Float16 => tch::autocast(true, f),
            Precision::Bfloat16 => {
                // SAFETY: plain calls into the shim; enter and exit pair up on this thread, the
                // guard restoring the previous state even if `f` panics.
                struct Exit(std::ffi::c_int);
                impl Drop for Exit {
                    fn drop(&mut self) {
                        unsafe { petal_cpu_autocast_exit(self.0) }
                    }
                }
                let _exit = Exit(unsafe { petal_cpu_autocast_enter() });
                f()
            }
        }
    }
}

/// Whether this CPU has AMX-BF16 units the process may use (asked once, of libtorch).
pub fn cpu_amx_bf16() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    // SAFETY: a query without arguments.
    *HAS.get_or_init(|| unsafe { petal_cpu_amx_bf16() } == 1)
}

#[cfg(test)]
mod tests {
    use tch::{Kind, Tensor};

    use super::*;
    use crate::train::model::Model;

    #[test]
    fn the_recipe_decides_else_the_device_and_the_network() {
        let cpu = Device::Cpu;
        assert_eq!(Precision::choose(Some(false), cpu, Arch::Resnet50), Precision::Float32);
        assert_eq!(Precision::choose(Some(true), cpu, Arch::MobilenetV2), Precision::Bfloat16);
        assert_eq!(Precision::choose(Some(true), Device::Cuda(0), Arch::MobilenetV2), Precision::Float16);
        assert_eq!(Precision::choose(Some(false), Device::Cuda(0), Arch::Resnet50), Precision::Float32);
        assert_eq!(Precision::choose(None, Device::Cuda(0), Arch::MobilenetV2), Precision::Float16);
        // Depthwise networks stay in float32 on the CPU; dense ones use bfloat16 where AMX is.
        for arch in [Arch::MobilenetV2, Arch::EfficientnetB0] {
            assert_eq!(Precision::choose(None, cpu, arch), Precision::Float32, "{arch}");
        }
        let dense = if cpu_amx_bf16() { Precision::Bfloat16 } else { Precision::Float32 };
        for arch in [Arch::Resnet18, Arch::Resnet50, Arch::Resnet152, Arch::Vgg16, Arch::Vgg16Bn] {
            assert_eq!(Precision::choose(None, cpu, arch), dense, "{arch}");
        }
    }

    /// A training-mode forward and backward of ResNet18 in bfloat16 autocast: convolutions do run
    /// in bfloat16 (and only inside), the weights' gradients stay float32 and point about where
    /// float32's do.
    #[test]
    fn cpu_autocast_runs_convolutions_in_bfloat16_with_float32_gradients() {
        let x = Tensor::randn([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([8, 3, 3, 3], (Kind::Float, Device::Cpu));
        let conv = |x: &Tensor| x.conv2d(&w, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1);
        assert_eq!(Precision::Bfloat16.autocast(|| conv(&x)).kind(), Kind::BFloat16);
        assert_eq!(Precision::Bfloat16.autocast(|| Precision::Float32.autocast(|| conv(&x))).kind(), Kind::BFloat16);
        assert_eq!(conv(&x).kind(), Kind::Float, "autocast is off again afterwards");
        assert_eq!(
            Precision::Float16.autocast(|| conv(&x)).kind(),
            Kind::Float,
            "CUDA's autocast leaves the CPU alone"
        );

        tch::manual_seed(0);
        let model = Model::new(Arch::Resnet18.network(5), Device::Cpu);
        let x = Tensor::randn([4, 3, 64, 64], (Kind::Float, Device::Cpu));
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        let grads = |precision: Precision| -> Vec<Tensor> {
            let params: Vec<Tensor> = model.trainable().into_iter().map(|(_, p)| p).collect();
            let logits = precision.autocast(|| model.forward(&x, true)).to_kind(Kind::Float);
            Tensor::run_backward(&[logits.cross_entropy_for_logits(&y)], &params, false, false)
        };
        let (full, half) = (grads(Precision::Float32), grads(Precision::Bfloat16));
        assert_eq!(full.len(), half.len());
        let mut cosines: Vec<f64> = full
            .iter()
            .zip(&half)
            .map(|(f, h)| {
                assert_eq!(h.kind(), Kind::Float);
                (f * h).sum(Kind::Double).double_value(&[])
                    / (f.norm().double_value(&[]) * h.norm().double_value(&[])).max(1e-30)
            })
            .collect();
        cosines.sort_by(f64::total_cmp);
        // PyTorch's own bfloat16 autocast on torchvision's ResNet18, same shapes: the lowest
        // cosine 0.90, the median 0.94 (8 mantissa bits through a random network's chain).
        assert!(cosines[0] > 0.8 && cosines[cosines.len() / 2] > 0.9, "gradients in bfloat16: cosines {cosines:?}");
    }
}

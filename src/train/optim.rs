//! Adam with parameter groups, as `torch.optim.Adam` computes it (its single-tensor algorithm:
//! the same operations in the same order), on tensors of any device.
use tch::Tensor;

use crate::train::recipe::AdamSpec;

struct Slot {
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
}

/// A group of parameters sharing one learning rate.
pub struct Group {
    pub name: String,
    pub base_lr: f64,
    pub lr: f64,
    slots: Vec<Slot>,
}

/// Adam over groups; parameters whose gradient is undefined are skipped (as PyTorch does).
pub struct Adam {
    pub spec: AdamSpec,
    pub groups: Vec<Group>,
    step: i32,
}

impl Adam {
    /// `groups`: (name, learning rate, parameters).
    pub fn new(spec: AdamSpec, groups: Vec<(String, f64, Vec<Tensor>)>) -> Adam {
        let groups = groups
            .into_iter()
            .map(|(name, lr, params)| Group {
                name,
                base_lr: lr,
                lr,
                slots: params
                    .into_iter()
                    .map(|p| Slot { exp_avg: p.zeros_like(), exp_avg_sq: p.zeros_like(), param: p })
                    .collect(),
            })
            .collect();
        Adam { spec, groups, step: 0 }
    }

    /// Sets every group's rate to `base_lr × factor` (StepLR).
    pub fn scale_lr(&mut self, factor: f64) {
        for g in &mut self.groups {
            g.lr = g.base_lr * factor;
        }
    }

    /// Every parameter, group by group.
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.slots.iter().map(|s| &s.param))
    }

    pub fn zero_grad(&mut self) {
        for g in &mut self.groups {
            for s in &mut g.slots {
                let mut grad = s.param.grad();
                if grad.defined() {
                    let _ = grad.detach_();
                    let _ = grad.zero_();
                }
            }
        }
    }

    /// One step. `torch.optim.Adam` keeps a step count per parameter; every parameter here steps
    /// together, so one count serves.
    pub fn step(&mut self) {
        self.step += 1;
        let AdamSpec { beta1, beta2, eps, weight_decay } = self.spec;
        let bias1 = 1.0 - beta1.powi(self.step);
        let bias2_sqrt = (1.0 - beta2.powi(self.step)).sqrt();
        tch::no_grad(|| {
            for g in &mut self.groups {
                let step_size = g.lr / bias1;
                for s in &mut g.slots {
                    let mut grad = s.param.grad();
                    if !grad.defined() {
                        continue;
                    }
                    if weight_decay != 0.0 {
                        grad = grad.g_add(&(&s.param * weight_decay));
                    }
                    let _ = s.exp_avg.lerp_(&grad, 1.0 - beta1);
                    let _ = s.exp_avg_sq.g_mul_scalar_(beta2).addcmul_(&grad, &grad.g_mul_scalar(1.0 - beta2));
                    let denom = (s.exp_avg_sq.sqrt() / bias2_sqrt).g_add_scalar(eps);
                    let _ = s.param.addcdiv_(&(&s.exp_avg * -step_size), &denom);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two steps against Adam's formulas written out in f64.
    #[test]
    fn matches_the_formulas() {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let mut adam = Adam::new(AdamSpec::default(), vec![("g".into(), 0.1, vec![p.shallow_clone()])]);
        let (mut x, mut m, mut v) = ([1.0f64, -2.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
        for t in 1..=2 {
            adam.zero_grad();
            let loss = (&p * &p).sum(Kind::Float); // grad = 2p
            loss.backward();
            adam.step();
            for i in 0..3 {
                let g = 2.0 * x[i];
                m[i] = 0.9 * m[i] + 0.1 * g;
                v[i] = 0.999 * v[i] + 0.001 * g * g;
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.999f64.powi(t));
                x[i] -= 0.1 * mh / (vh.sqrt() + 1e-8);
            }
        }
        let got = Vec::<f32>::try_from(&p.detach().to_device(Device::Cpu)).unwrap();
        for i in 0..3 {
            assert!((f64::from(got[i]) - x[i]).abs() < 1e-5, "{got:?} vs {x:?}");
        }
    }
}

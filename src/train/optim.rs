//! Adam with parameter groups, on libtorch's fused multi-tensor kernel (`_fused_adam_`: the
//! update of every parameter of a group in one kernel, as `torch.optim.Adam(fused=True)`), and
//! dynamic loss scaling on the device (`_amp_foreach_non_finite_check_and_unscale_`,
//! `_amp_update_scale_`, as `torch.amp.GradScaler`): a step never waits for the device. tch does
//! not bind these list ops; `csrc/optim.cpp` does.
use std::ffi::{c_char, c_int, c_long, c_void};

use tch::{Kind, Tensor};

use crate::error::{Error, ErrorCode, Result};
use crate::train::recipe::AdamSpec;

extern "C" {
    fn petal_clear_grads(tensors: *mut *mut c_void, n: c_int, err: *mut c_char, err_len: c_int) -> c_int;
    fn petal_fused_adam(
        params: *mut *mut c_void,
        grads: *mut *mut c_void,
        exp_avgs: *mut *mut c_void,
        exp_avg_sqs: *mut *mut c_void,
        steps: *mut *mut c_void,
        n: c_int,
        lr: f64,
        beta1: f64,
        beta2: f64,
        weight_decay: f64,
        eps: f64,
        adamw: c_int,
        found_inf: *mut c_void,
        err: *mut c_char,
        err_len: c_int,
    ) -> c_int;
    fn petal_amp_unscale(
        grads: *mut *mut c_void,
        n: c_int,
        found_inf: *mut c_void,
        inv_scale: *mut c_void,
        err: *mut c_char,
        err_len: c_int,
    ) -> c_int;
    fn petal_amp_update_scale(
        scale: *mut c_void,
        growth_tracker: *mut c_void,
        found_inf: *mut c_void,
        growth: f64,
        backoff: f64,
        interval: c_long,
        err: *mut c_char,
        err_len: c_int,
    ) -> c_int;
}

fn ptr(t: &Tensor) -> *mut c_void {
    t.as_ptr() as *mut c_void
}

fn ptrs(ts: &[Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(ptr).collect()
}

/// Runs one shim call, turning its error message into ours.
fn checked(f: impl FnOnce(*mut c_char, c_int) -> c_int) -> Result<()> {
    let mut err = [0 as c_char; 512];
    if f(err.as_mut_ptr(), err.len() as c_int) == 0 {
        return Ok(());
    }
    let msg = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
    Err(Error::new(ErrorCode::TrainingFailed, format!("libtorch optimiser kernel: {msg}")))
}

/// A group of parameters sharing one learning rate.
pub struct Group {
    pub name: String,
    pub base_lr: f64,
    pub lr: f64,
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// The step count: one float tensor on the group's device, shared by its parameters (they
    /// always step together), passed once per parameter to the kernel.
    step: Tensor,
}

/// Adam over groups. Parameters whose gradient is undefined are skipped, as PyTorch does.
pub struct Adam {
    pub spec: AdamSpec,
    pub groups: Vec<Group>,
}

impl Adam {
    /// `groups`: (name, learning rate, parameters); a group's parameters share one device.
    pub fn new(spec: AdamSpec, groups: Vec<(String, f64, Vec<Tensor>)>) -> Adam {
        let groups = groups
            .into_iter()
            .map(|(name, lr, params)| {
                let device = params.first().map_or(tch::Device::Cpu, Tensor::device);
                Group {
                    name,
                    base_lr: lr,
                    lr,
                    exp_avg: params.iter().map(Tensor::zeros_like).collect(),
                    exp_avg_sq: params.iter().map(Tensor::zeros_like).collect(),
                    step: Tensor::zeros([], (Kind::Float, device)),
                    params,
                }
            })
            .collect();
        Adam { spec, groups }
    }

    /// Sets every group's rate to `base_lr × factor` (StepLR).
    pub fn scale_lr(&mut self, factor: f64) {
        for g in &mut self.groups {
            g.lr = g.base_lr * factor;
        }
    }

    /// Every parameter, group by group.
    pub fn params(&self) -> impl Iterator<Item = &Tensor> {
        self.groups.iter().flat_map(|g| g.params.iter())
    }

    /// Every state tensor (moments and step counts), named `{group}/{i}/exp_avg`,
    /// `{group}/{i}/exp_avg_sq` and `{group}/step`, for a training checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for g in &self.groups {
            for (i, (m, v)) in g.exp_avg.iter().zip(&g.exp_avg_sq).enumerate() {
                out.push((format!("{}/{i}/exp_avg", g.name), m.shallow_clone()));
                out.push((format!("{}/{i}/exp_avg_sq", g.name), v.shallow_clone()));
            }
            out.push((format!("{}/step", g.name), g.step.shallow_clone()));
        }
        out
    }

    /// Restores what `state_tensors` gave (the same groups, in the same order, with the same
    /// shapes): every tensor must be there.
    pub fn load_state_tensors(&mut self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let get = |name: String, like: &Tensor| -> Result<Tensor> {
            let t = tensors.get(&name).ok_or_else(|| {
                Error::new(ErrorCode::IntegrityError, format!("the checkpoint has no optimiser tensor {name}"))
            })?;
            if t.size() != like.size() {
                return Err(Error::new(
                    ErrorCode::IntegrityError,
                    format!("optimiser tensor {name} is {:?} in the checkpoint, {:?} here", t.size(), like.size()),
                ));
            }
            Ok(t.to_kind(like.kind()).to_device(like.device()))
        };
        tch::no_grad(|| {
            for g in &mut self.groups {
                for i in 0..g.exp_avg.len() {
                    let m = get(format!("{}/{i}/exp_avg", g.name), &g.exp_avg[i])?;
                    let v = get(format!("{}/{i}/exp_avg_sq", g.name), &g.exp_avg_sq[i])?;
                    g.exp_avg[i].copy_(&m);
                    g.exp_avg_sq[i].copy_(&v);
                }
                let s = get(format!("{}/step", g.name), &g.step)?;
                g.step.copy_(&s);
            }
            Ok(())
        })
    }

    /// Optimiser steps taken so far: the largest step count of a group (reads the device).
    pub fn steps_taken(&self) -> u64 {
        self.groups.iter().map(|g| g.step.double_value(&[]) as u64).max().unwrap_or(0)
    }

    /// Forgets every gradient (`zero_grad(set_to_none=True)`, PyTorch's default): the next
    /// backward writes the gradients instead of adding them to zeros, and a parameter that gets
    /// none is left alone by the step.
    pub fn zero_grad(&mut self) {
        let params: Vec<Tensor> = self.groups.iter().flat_map(|g| &g.params).map(Tensor::shallow_clone).collect();
        let mut p = ptrs(&params);
        checked(|err, len| unsafe { petal_clear_grads(p.as_mut_ptr(), p.len() as c_int, err, len) })
            .expect("resetting a gradient cannot fail");
    }

    /// One step. With `found_inf` (a one-element float tensor), groups skip the update on the
    /// device when it is non-zero, and their step count does not advance.
    pub fn step(&mut self, found_inf: Option<&Tensor>) -> Result<()> {
        let AdamSpec { beta1, beta2, eps, weight_decay, decoupled_weight_decay } = self.spec;
        tch::no_grad(|| {
            for g in &mut self.groups {
                let live: Vec<usize> = (0..g.params.len()).filter(|&i| g.params[i].grad().defined()).collect();
                if live.is_empty() {
                    continue;
                }
                let pick = |v: &[Tensor]| live.iter().map(|&i| v[i].shallow_clone()).collect::<Vec<_>>();
                // The tensors must outlive the pointers handed to the kernel.
                let (params, avgs, sqs) = (pick(&g.params), pick(&g.exp_avg), pick(&g.exp_avg_sq));
                let (mut p, mut m, mut v) = (ptrs(&params), ptrs(&avgs), ptrs(&sqs));
                let grads: Vec<Tensor> = live.iter().map(|&i| g.params[i].grad()).collect();
                let mut gr = ptrs(&grads);
                let _ = g.step.g_add_scalar_(1.0);
                let mut steps = vec![ptr(&g.step); live.len()];
                let fi = found_inf.map_or(std::ptr::null_mut(), ptr);
                checked(|err, len| unsafe {
                    petal_fused_adam(
                        p.as_mut_ptr(),
                        gr.as_mut_ptr(),
                        m.as_mut_ptr(),
                        v.as_mut_ptr(),
                        steps.as_mut_ptr(),
                        live.len() as c_int,
                        g.lr,
                        beta1,
                        beta2,
                        weight_decay,
                        eps,
                        c_int::from(decoupled_weight_decay),
                        fi,
                        err,
                        len,
                    )
                })?;
                if let Some(fi) = found_inf {
                    let _ = g.step.g_sub_(&fi.view([]));
                }
            }
            Ok(())
        })
    }
}

/// Dynamic loss scaling for fp16, on the device (`torch.amp.GradScaler`'s rules: start at 2^16,
/// halve and skip the step on overflow, double after 2000 good steps).
pub struct LossScaler {
    scale: Tensor,
    growth_tracker: Tensor,
    found_inf: Tensor,
}

impl LossScaler {
    pub fn new(device: tch::Device) -> Self {
        LossScaler {
            scale: Tensor::full([1], 65536.0, (Kind::Float, device)),
            growth_tracker: Tensor::zeros([1], (Kind::Int, device)),
            found_inf: Tensor::zeros([1], (Kind::Float, device)),
        }
    }

    /// Backward on the scaled loss, unscale the gradients, step unless one overflowed, update the scale.
    pub fn backward_and_step(&mut self, loss: &Tensor, adam: &mut Adam) -> Result<()> {
        self.backward(loss);
        self.step(adam)
    }

    /// Backward on the scaled loss.
    pub fn backward(&self, loss: &Tensor) {
        (loss * &self.scale.view([])).backward();
    }

    /// After `backward`: unscale the gradients, step unless one overflowed, update the scale.
    pub fn step(&mut self, adam: &mut Adam) -> Result<()> {
        let grads: Vec<Tensor> = adam.params().map(Tensor::grad).filter(Tensor::defined).collect();
        tch::no_grad(|| -> Result<()> {
            let _ = self.found_inf.zero_();
            let inv = self.scale.reciprocal();
            let mut g = ptrs(&grads);
            checked(|err, len| unsafe {
                petal_amp_unscale(g.as_mut_ptr(), g.len() as c_int, ptr(&self.found_inf), ptr(&inv), err, len)
            })?;
            adam.step(Some(&self.found_inf))?;
            checked(|err, len| unsafe {
                petal_amp_update_scale(
                    ptr(&self.scale),
                    ptr(&self.growth_tracker),
                    ptr(&self.found_inf),
                    2.0,
                    0.5,
                    2000,
                    err,
                    len,
                )
            })
        })
    }

    /// The scale and its growth tracker, for a training checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        vec![
            ("scale".into(), self.scale.shallow_clone()),
            ("growth_tracker".into(), self.growth_tracker.shallow_clone()),
        ]
    }

    /// Restores what `state_tensors` gave; a checkpoint without them keeps the initial state.
    pub fn load_state_tensors(&mut self, tensors: &std::collections::HashMap<String, Tensor>) {
        tch::no_grad(|| {
            for (name, mine) in [("scale", &mut self.scale), ("growth_tracker", &mut self.growth_tracker)] {
                if let Some(t) = tensors.get(name).filter(|t| t.size() == mine.size()) {
                    mine.copy_(&t.to_kind(mine.kind()).to_device(mine.device()));
                }
            }
        });
    }

    /// The current scale (reads the device).
    pub fn scale(&self) -> f64 {
        self.scale.double_value(&[0])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Two steps against Adam's formulas written out in f64; with weight decay, coupled (Adam:
    /// `g + wd·x`) and decoupled (AdamW: `x ← x − lr·wd·x` before the update), as PyTorch documents
    /// `torch.optim.Adam` and `torch.optim.AdamW`.
    #[test]
    fn matches_the_formulas() {
        for (weight_decay, decoupled) in [(0.0, false), (0.1, false), (0.1, true)] {
            adam_steps_match(weight_decay, decoupled);
        }
    }

    fn adam_steps_match(weight_decay: f64, decoupled_weight_decay: bool) {
        let p = Tensor::from_slice(&[1.0f32, -2.0, 0.5]).set_requires_grad(true);
        let spec = AdamSpec { weight_decay, decoupled_weight_decay, ..AdamSpec::default() };
        let mut adam = Adam::new(spec, vec![("g".into(), 0.1, vec![p.shallow_clone()])]);
        let (mut x, mut m, mut v) = ([1.0f64, -2.0, 0.5], [0.0f64; 3], [0.0f64; 3]);
        for t in 1..=2 {
            adam.zero_grad();
            let loss = (&p * &p).sum(Kind::Float); // grad = 2p
            loss.backward();
            adam.step(None).unwrap();
            for i in 0..3 {
                let mut g = 2.0 * x[i];
                if decoupled_weight_decay {
                    x[i] -= 0.1 * weight_decay * x[i];
                } else {
                    g += weight_decay * x[i];
                }
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

    /// An overflowing gradient: the step is skipped (parameter and step count unchanged) and the
    /// scale halves; a finite one then steps with the gradient unscaled.
    #[test]
    fn loss_scaling_skips_overflow_and_unscales() {
        let p = Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true);
        let mut adam = Adam::new(AdamSpec::default(), vec![("g".into(), 0.1, vec![p.shallow_clone()])]);
        let mut scaler = LossScaler::new(Device::Cpu);
        let before = p.detach().copy();
        adam.zero_grad();
        let inf = (&p * f64::INFINITY).sum(Kind::Float);
        scaler.backward_and_step(&inf, &mut adam).unwrap();
        assert!(p.detach().equal(&before), "skipped");
        assert_eq!(scaler.scale(), 32768.0);
        assert_eq!(adam.groups[0].step.double_value(&[]), 0.0);
        adam.zero_grad();
        let loss = (&p * 3.0).sum(Kind::Float);
        scaler.backward_and_step(&loss, &mut adam).unwrap();
        let g = Vec::<f32>::try_from(&p.grad()).unwrap();
        assert_eq!(g, [3.0, 3.0], "unscaled");
        let moved = Vec::<f32>::try_from(&p.detach()).unwrap();
        assert!((moved[0] - 0.9).abs() < 1e-5, "{moved:?}: the first Adam step moves by lr");
    }
}

//! The learning-rate schedules against PyTorch's schedulers (the venv's torch): StepLR, and the
//! cosine schedule with linear warm-up, epoch by epoch.
use crate::common;
use petal::train::recipe::{lr_factor, Cosine};

fn pytorch(args: &[&str]) -> Vec<f64> {
    serde_json::from_str(&common::oracle("lr_schedule.py", args)).unwrap()
}

fn assert_close(ours: &[f64], theirs: &[f64], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (e, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!((a - b).abs() <= 1e-9 * b.abs().max(1e-12), "{what}, epoch {e}: petal {a} vs PyTorch {b}");
    }
}

#[test]
fn schedules_match_pytorchs_schedulers() {
    for (epochs, step_size, gamma) in [(16, 6, 0.3), (8, 2, 0.7)] {
        let ours: Vec<f64> = (0..epochs).map(|e| lr_factor(None, (step_size, gamma), e, epochs)).collect();
        let theirs = pytorch(&["step", &epochs.to_string(), &step_size.to_string(), &gamma.to_string()]);
        assert_close(&ours, &theirs, &format!("StepLR({step_size}, {gamma}) over {epochs}"));
    }
    for (epochs, warmup_epochs, start_factor) in [(10, 2, 0.1), (30, 5, 0.01), (8, 0, 0.1), (6, 1, 0.5)] {
        let c = Cosine { warmup_epochs, start_factor };
        let ours: Vec<f64> = (0..epochs).map(|e| lr_factor(Some(&c), (1, 1.0), e, epochs)).collect();
        let theirs = pytorch(&["cosine", &epochs.to_string(), &warmup_epochs.to_string(), &start_factor.to_string()]);
        assert_close(&ours, &theirs, &format!("cosine over {epochs}, warm-up {warmup_epochs} from {start_factor}"));
    }
}

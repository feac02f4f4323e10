//! Hostile inputs through the HTTP API, resource bounds, faults, and the replay of every fuzz finding.
//!
//! One test binary for the subject; its parts are the modules below, in tests/robustness/.
mod common;

#[path = "robustness/faults.rs"]
mod faults;
#[path = "robustness/fuzz_regressions.rs"]
mod fuzz_regressions;
#[path = "robustness/hostile.rs"]
mod hostile;
#[path = "robustness/resources.rs"]
mod resources;

//! The command line: configuration layering and `petal doctor`, the bench commands, `petal registry` and `petal weights`.
//!
//! One test binary for the subject; its parts are the modules below, in tests/cli/.
mod common;

#[path = "cli/bench.rs"]
mod bench;
#[path = "cli/config_and_doctor.rs"]
mod config_and_doctor;
#[path = "cli/registry.rs"]
mod registry;
#[path = "cli/weights.rs"]
mod weights;

//! Backbones, weight import and ONNX export against the torchvision and onnxruntime oracles, the native stack, augmentation and the vision transforms. These tests drive libtorch in this process: they take turns (`common::one_at_a_time`).
//!
//! One test binary for the subject; its parts are the modules below, in tests/models/.
mod common;

#[path = "models/augment.rs"]
mod augment;
#[path = "models/backbones.rs"]
mod backbones;
#[path = "models/export.rs"]
mod export;
#[path = "models/native_stack.rs"]
mod native_stack;
#[path = "models/schedules.rs"]
mod schedules;
#[path = "models/vision.rs"]
mod vision;

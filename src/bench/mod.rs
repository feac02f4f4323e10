//! Benchmarks, each against its reference measured in the same run: `infer` (onnxruntime's
//! Python `session.run`) and `train` (the notebook's torchvision + DataLoader stack).
pub mod infer;
pub mod train;

pub use infer::{infer, InferBench, InferReport};

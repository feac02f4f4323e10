//! Benchmarks, each against its reference measured in the same run: `infer` (onnxruntime's
//! Python `session.run`), `batch` (the same and PyTorch eager, at fixed batch sizes) and `train`
//! (the notebook's torchvision + DataLoader stack).
pub mod batch;
pub mod infer;
pub mod train;

pub use infer::{infer, InferBench, InferReport};

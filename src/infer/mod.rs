//! Inference through ONNX Runtime (`ort`).
pub mod engine;
pub mod eval;
pub mod load;
pub mod runtime;
pub mod serving;

//! Inference through ONNX Runtime (`ort`).
pub mod runtime;

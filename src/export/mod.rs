//! Export of trained models to ONNX.
pub mod onnx;

//! Training with `tch` (libtorch).
pub mod device;

//! Training with `tch` (libtorch): backbone descriptions, models, weight import, devices.
pub mod arch;
pub mod catalog;
pub mod device;
pub mod model;
pub mod weights;

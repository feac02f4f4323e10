//! Training with `tch` (libtorch): backbone descriptions, models, weight import, devices.
pub mod arch;
pub mod augment;
pub mod catalog;
pub mod checkpoint;
pub mod device;
pub mod finetune;
pub mod loader;
pub mod model;
pub mod optim;
pub mod plot;
pub mod precision;
pub mod recipe;
pub mod tensor_cache;
pub mod trainer;
pub mod weights;

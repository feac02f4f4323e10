//! The interface of an ONNX model petal exports and serves: the graph's input and output names
//! and the metadata keys that carry its classes, transform and lineage.

/// The graph's input: `[batch, 3, size, size]` float32, normalised.
pub const INPUT_NAME: &str = "input";
/// The graph's output: `[batch, classes]` logits.
pub const OUTPUT_NAME: &str = "logits";

/// Metadata keys written into every exported model.
pub mod meta {
    pub const CLASS_NAMES: &str = "petal.class_names";
    pub const TRANSFORM: &str = "petal.eval_transform";
    pub const VERSION: &str = "petal.version";
    pub const ARCH: &str = "petal.arch";
    pub const IMAGE_SIZE: &str = "petal.image_size";
    pub const PROVENANCE: &str = "petal.provenance_digest";
}

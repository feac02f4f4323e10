//! What a dataset was read as.
use serde::{Deserialize, Serialize};

/// Which layout a dataset was read as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Oxford102,
    ImageFolderSplit,
    ImageFolder,
}

/// A summary for logs, job records and provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DatasetSummary {
    pub digest: String,
    pub layout: Layout,
    pub split: String,
    pub classes: Vec<String>,
    pub class_names: Vec<String>,
    pub train_images: usize,
    pub val_images: usize,
    /// Images of the dataset's `test/` folder, held out from training and validation.
    #[serde(default)]
    pub test_images: usize,
    pub warnings: usize,
    /// Training images per class, in class order.
    #[serde(default)]
    pub class_counts: Vec<usize>,
    /// The largest class over the smallest (training images): 1 is balanced.
    #[serde(default)]
    pub imbalance: f64,
}

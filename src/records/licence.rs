//! Licence and terms records of a model's lineage (base weights, datasets).
use serde::{Deserialize, Serialize};

/// A licence or terms record of one component of a model's lineage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Licence {
    pub component: String,
    pub spdx: Option<String>,
    pub url: String,
    pub commercial_use: bool,
    pub terms: String,
}

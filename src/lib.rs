//! petal: turns a labelled image dataset into a served image classifier by transfer learning.
//!
//! Data flows one way: upload → dataset → job → trainer → checkpoint → export → registry → server.
//! Modules are named for what they do; see README.md for the map.
pub mod api;
pub mod cli;
pub mod config;
pub mod dataset;
pub mod error;
pub mod export;
pub mod foundation;
pub mod infer;
pub mod jobs;
pub mod publish;
pub mod records;
pub mod registry;
pub mod server;
pub mod telemetry;
pub mod train;
pub mod vision;

pub use error::{Error, ErrorCode, Result};

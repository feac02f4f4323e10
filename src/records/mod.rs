//! Plain records that cross layers: written by one part of petal and read by another, so they
//! belong to neither. The trainer and the registry both speak of licences; ingest writes dataset
//! summaries that jobs and the registry keep; the exporter writes the ONNX interface the engine
//! reads; model and alias names are checked by one rule. Types only, no behaviour beyond checking
//! and (de)serialisation.
pub mod dataset;
pub mod licence;
pub mod model_io;
pub mod names;

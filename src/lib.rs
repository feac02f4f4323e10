//! petal: turns a labelled image dataset into a served image classifier by transfer learning.
//!
//! Data flows one way: upload → dataset → job → trainer → checkpoint → export → registry → server.
//!
//! The modules stand in layers, top to bottom. A module uses only modules of the layers below its
//! own, never one above it nor another of its own layer; `tests/architecture.rs` reads every
//! `crate::` path in `src/` and holds the code to this list, which is the only place the order is
//! written:
//!
//! - cli: cli — the command line, one file per subcommand (`main.rs` only parses and dispatches)
//! - server: server — start-up: configuration, registry, engine, routes, graceful shutdown
//! - http: api — actix handlers, one file per resource; they build a request for the layers below
//! - jobs: jobs — job specs and records, the shared queue's leases, the runner, retention
//! - publish: publish — a fine-tuning run's winner exported to ONNX and registered with provenance
//! - export: export — the ONNX graph writer
//! - models: train, infer — the trainer and the serving engine, which never use each other
//! - data: dataset — archive ingest, layouts, splits, what a dataset may cost
//! - pixels: vision — decoding and the transforms shared by training and serving
//! - storage: registry — the object store: every key (`registry/layout.rs`), versions, aliases,
//!   datasets, job records, queue and leases; the only module that touches the store
//! - records: records — plain records that cross layers (licences, dataset summaries, the ONNX
//!   model interface)
//! - logging: telemetry — logging set-up, and the metrics the serving engine and the jobs record
//! - config: config — the one configuration, every key with its default
//! - foundation: foundation — clock, hashing, files, bounded streams, budgets; no domain
//! - errors: error — the one error type and its table of stable codes
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

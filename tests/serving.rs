//! Serving: the HTTP server's behaviour, the inference engine, the bundled flowers model, the Open Inference
//! Protocol, the OpenAPI document.
//!
//! One test binary for the subject; its parts are the modules below, in tests/serving/.
mod common;

#[path = "serving/bundled.rs"]
mod bundled;
#[path = "serving/http.rs"]
mod http;
#[path = "serving/infer.rs"]
mod infer;
#[path = "serving/oip.rs"]
mod oip;
#[path = "serving/openapi.rs"]
mod openapi;

//! Liveness and readiness.
use std::sync::RwLock;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::AppState;

/// One readiness condition.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Check {
    /// What is checked: `startup`, `onnxruntime`, `registry`, `shutdown`, …
    pub name: String,
    pub ok: bool,
    /// What was found, or why it is not ok.
    pub detail: String,
}

/// The answer of `GET /readyz`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"ready": false, "reasons": ["onnxruntime: onnxruntime library /x/libonnxruntime.so cannot be read: No such file or directory"], "checks": [{"name": "onnxruntime", "ok": false, "detail": "onnxruntime library /x/libonnxruntime.so cannot be read: No such file or directory"}, {"name": "registry", "ok": true, "detail": "local folder /srv/petal/registry is writable"}]}))]
pub struct ReadinessReport {
    pub ready: bool,
    /// `name: detail` of every failing check; empty when ready.
    pub reasons: Vec<String>,
    pub checks: Vec<Check>,
}

/// The readiness conditions of this process; ready when every one is ok.
pub struct Readiness {
    checks: RwLock<Vec<Check>>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self::starting()
    }
}

impl Readiness {
    /// Not ready until start-up checks have run.
    pub fn starting() -> Self {
        Self {
            checks: RwLock::new(vec![Check {
                name: "startup".into(),
                ok: false,
                detail: "start-up checks are still running".into(),
            }]),
        }
    }

    /// Sets (or adds) the check called `name`.
    pub fn set(&self, name: &str, ok: bool, detail: impl Into<String>) {
        let mut checks = self.checks.write().expect("readiness lock");
        let check = Check { name: name.into(), ok, detail: detail.into() };
        match checks.iter_mut().find(|c| c.name == name) {
            Some(c) => *c = check,
            None => checks.push(check),
        }
    }

    pub fn report(&self) -> ReadinessReport {
        let checks = self.checks.read().expect("readiness lock").clone();
        let reasons: Vec<String> =
            checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect();
        ReadinessReport { ready: reasons.is_empty(), reasons, checks }
    }
}

impl ReadinessReport {
    /// Names and states only: a check's detail names paths, endpoints and hosts, which only
    /// authenticated (or, without tokens, local) callers and the logs see.
    pub fn redacted(self) -> Self {
        const HIDDEN: &str = "details are shown to callers with a token, and in the logs";
        let checks: Vec<Check> = self
            .checks
            .into_iter()
            .map(|c| Check { detail: if c.ok { "ok".into() } else { HIDDEN.into() }, ..c })
            .collect();
        let reasons = checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {HIDDEN}", c.name)).collect();
        ReadinessReport { ready: self.ready, reasons, checks }
    }
}

/// Whether the caller of an open endpoint may see details: with tokens configured, a valid token;
/// without, a loopback peer.
fn may_see_details(req: &actix_web::HttpRequest, state: &AppState) -> bool {
    let tokens = &state.config.auth.tokens;
    if tokens.is_empty() {
        return req.peer_addr().is_some_and(|a| a.ip().is_loopback());
    }
    crate::api::auth::bearer(req.headers()).is_some_and(|given| crate::api::auth::find(tokens, given).is_some())
}

/// Liveness: the process answers HTTP.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ok", "version": "0.1.0", "uptime_s": 12.5}))]
pub struct Liveness {
    pub status: &'static str,
    pub version: &'static str,
    pub uptime_s: f64,
}

#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness probe",
    description = "Answers 200 as long as the process can serve HTTP. It checks no dependency: use `/readyz` for that.",
    responses((status = 200, description = "The process is alive.", body = Liveness))
)]
#[get("/healthz")]
pub async fn healthz(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(Liveness {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: state.started.elapsed().as_secs_f64(),
    })
}

#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness probe",
    description = "200 when every readiness check passes (onnxruntime loaded, registry writable, start-up done, \
                   not shutting down); otherwise 503 with the reason of each failing check.",
    responses(
        (status = 200, description = "Ready to serve.", body = ReadinessReport,
         example = json!({"ready": true, "reasons": [], "checks": [{"name": "startup", "ok": true, "detail": "done"}]})),
        (status = 503, description = "Not ready; `reasons` says why.", body = ReadinessReport)
    )
)]
#[get("/readyz")]
pub async fn readyz(req: actix_web::HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut report = state.readiness.report();
    if !may_see_details(&req, &state) {
        report = report.redacted();
    }
    state.metrics.ready.set(i64::from(report.ready));
    if report.ready {
        HttpResponse::Ok().json(report)
    } else {
        HttpResponse::ServiceUnavailable().json(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_every_check() {
        let r = Readiness::starting();
        assert!(!r.report().ready);
        r.set("startup", true, "done");
        r.set("onnxruntime", true, "1.31.1");
        assert!(r.report().ready);
        r.set("registry", false, "not writable");
        let report = r.report();
        assert!(!report.ready);
        assert_eq!(report.reasons, vec!["registry: not writable".to_string()]);
        assert_eq!(report.checks.len(), 3);
    }
}

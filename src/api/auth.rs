//! Bearer tokens with scopes (`auth.tokens`). Each route needs a scope (`admin` holds them all);
//! probes, metrics and the API description are open. Without any token configured the API is
//! open and `petal serve` binds to loopback only. Tokens are compared in constant time (as sha256
//! digests, so lengths never leak) and never logged; logs name the holder.
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::AppState;
use crate::config::{ApiToken, Scope};
use crate::error::{Error, ErrorCode};

/// Who is calling, for audit fields (alias history, logs).
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
}

/// The scopes that may call `method path` (any one suffices; `admin` always does); empty: open.
pub fn required(method: &Method, path: &str) -> &'static [Scope] {
    let open = ["/healthz", "/readyz", "/metrics", "/openapi.json"];
    if open.contains(&path) || path == "/docs" || path.starts_with("/docs/") {
        return &[];
    }
    if path == "/classify" {
        return &[Scope::Classify];
    }
    if path == "/finetune" || path == "/jobs" || path.starts_with("/jobs/") {
        return &[Scope::Train];
    }
    if path == "/models" || path.starts_with("/models/") {
        return if method == Method::GET { &[Scope::Classify, Scope::Train] } else { &[Scope::Admin] };
    }
    // Unknown routes answer 404 to anyone.
    &[]
}

/// The configured token matching `given`, compared in constant time against every token.
pub fn find<'a>(tokens: &'a [ApiToken], given: &str) -> Option<&'a ApiToken> {
    let digest = Sha256::digest(given.as_bytes());
    let mut found = None;
    for t in tokens {
        let candidate = Sha256::digest(t.token.as_bytes());
        if bool::from(candidate.ct_eq(&digest)) {
            found = Some(t);
        }
    }
    found
}

pub async fn authorize(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(state) = req.app_data::<web::Data<AppState>>().cloned() else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let tokens = &state.config.auth.tokens;
    if tokens.is_empty() {
        req.extensions_mut().insert(Caller { name: "anonymous (no tokens configured; loopback only)".into() });
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let needed = required(req.method(), req.path());
    if needed.is_empty() {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    let given = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let Some(token) = given.and_then(|g| find(tokens, g)) else {
        let e = Error::new(
            ErrorCode::Unauthorized,
            if given.is_some() { "the bearer token is not valid" } else { "send Authorization: Bearer <token>" },
        )
        .with_header("www-authenticate", "Bearer realm=\"petal\"");
        return Ok(req.error_response(e));
    };
    if !(token.scopes.contains(&Scope::Admin) || needed.iter().any(|s| token.scopes.contains(s))) {
        let names: Vec<&str> = needed.iter().map(|s| scope_name(*s)).collect();
        let e = Error::new(
            ErrorCode::Forbidden,
            format!("this endpoint needs the {} scope; the token of {} lacks it", names.join(" or "), token.name),
        );
        return Ok(req.error_response(e));
    }
    tracing::debug!(caller = %token.name, "authorized");
    req.extensions_mut().insert(Caller { name: token.name.clone() });
    next.call(req).await.map(ServiceResponse::map_into_boxed_body)
}

pub fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Classify => "classify",
        Scope::Train => "train",
        Scope::Admin => "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, token: &str, scopes: &[Scope]) -> ApiToken {
        ApiToken { name: name.into(), token: token.into(), scopes: scopes.to_vec() }
    }

    #[test]
    fn tokens_match_exactly() {
        let tokens =
            [token("a", "0123456789abcdef", &[Scope::Classify]), token("b", "fedcba9876543210", &[Scope::Train])];
        assert_eq!(find(&tokens, "fedcba9876543210").map(|t| t.name.as_str()), Some("b"));
        assert!(find(&tokens, "fedcba987654321").is_none());
        assert!(find(&tokens, "").is_none());
    }

    #[test]
    fn routes_need_their_scopes() {
        assert!(required(&Method::GET, "/healthz").is_empty());
        assert!(required(&Method::GET, "/docs/index.html").is_empty());
        assert_eq!(required(&Method::POST, "/classify"), &[Scope::Classify]);
        assert_eq!(required(&Method::GET, "/jobs/x/events"), &[Scope::Train]);
        assert_eq!(required(&Method::PUT, "/models/m/aliases/production"), &[Scope::Admin]);
        assert_eq!(required(&Method::GET, "/models/m"), &[Scope::Classify, Scope::Train]);
    }
}

//! Bearer tokens with scopes (`auth.tokens`). Each route needs a scope (`admin` holds them all);
//! probes, metrics, the API description and the web console's files are open. Without any token
//! configured the API is open and `petal serve` binds to loopback only. Tokens are compared in
//! constant time (as sha256 digests, so lengths never leak) and never logged; logs name the holder.
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

/// Who is calling, for audit fields (alias history, logs) and scope checks inside handlers.
#[derive(Debug, Clone)]
pub struct Caller {
    pub name: String,
    /// `None` when no token is configured (the API is open, on loopback only).
    pub scopes: Option<Vec<Scope>>,
}

impl Caller {
    /// Whether the caller may do what `scope` allows.
    pub fn may(&self, scope: Scope) -> bool {
        self.scopes.as_ref().is_none_or(|s| s.contains(&Scope::Admin) || s.contains(&scope))
    }
}

/// Who may call `method path` — `path` decoded as the router decodes it. `None`: open to anyone;
/// otherwise any one of the scopes (`admin` always). Paths no route serves need a valid token of any
/// scope (then answer 404): only the probes, metrics, API description and console files are open.
pub fn required(method: &Method, path: &str) -> Option<&'static [Scope]> {
    const ANY: &[Scope] = &[Scope::Classify, Scope::Train, Scope::Admin];
    let open = ["/healthz", "/readyz", "/metrics", "/openapi.json", "/v2/health/live", "/v2/health/ready"];
    // The console's page and files hold no data (what it shows comes from the API, with the token
    // the person gives it), so loading it needs none.
    let console = path == "/" || path.starts_with("/console/");
    if open.contains(&path) || console || path == "/docs" || path.starts_with("/docs/") {
        return None;
    }
    Some(if path == "/classify" || crate::api::oip::is_oip_path(path) {
        &[Scope::Classify]
    } else if path == "/finetune" || path == "/finetune/check" || path == "/jobs" || path.starts_with("/jobs/") {
        &[Scope::Train]
    } else if path == "/models" || path.starts_with("/models/") {
        if method == Method::GET {
            &[Scope::Classify, Scope::Train]
        } else {
            &[Scope::Admin]
        }
    } else {
        ANY
    })
}

/// The bearer token a request carries, if any.
pub fn bearer(headers: &actix_web::http::header::HeaderMap) -> Option<&str> {
    headers
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
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
        return Ok(req.error_response(Error::internal("the application state is missing")));
    };
    let tokens = &state.config.auth.tokens;
    if tokens.is_empty() {
        // A worker serves only probes and metrics, on the address it is configured with.
        if state.role != crate::config::Role::Worker {
            if let Err(e) = local_only(req.headers(), &state.config.server) {
                tracing::warn!(reason = %e.message, "refused a non-local request (no tokens configured)");
                return Ok(req.error_response(e));
            }
        }
        let caller = Caller { name: "anonymous (no tokens configured; loopback only)".into(), scopes: None };
        req.extensions_mut().insert(caller);
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    }
    // The path as the router sees it (percent-decoded), so `/%63lassify` is `/classify` here too.
    let path = actix_web::dev::Url::new(req.uri().clone()).path().to_string();
    let Some(needed) = required(req.method(), &path) else {
        return next.call(req).await.map(ServiceResponse::map_into_boxed_body);
    };
    let given = bearer(req.headers());
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
    req.extensions_mut().insert(Caller { name: token.name.clone(), scopes: Some(token.scopes.clone()) });
    next.call(req).await.map(ServiceResponse::map_into_boxed_body)
}

/// The host of a `Host` header or an origin's authority, without its port, lowercase.
fn host_of(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("").to_string();
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h.to_string(),
        _ => a,
    }
}

fn loopback(host: &str) -> bool {
    host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Without tokens, petal is for the local user only, as notebook servers are: the `Host` must be
/// a loopback name or address or a configured name (no DNS rebinding), and a browser request must
/// come from petal's own origin or a configured one (no cross-site requests from web pages).
pub fn local_only(
    headers: &actix_web::http::header::HeaderMap,
    server: &crate::config::ServerConfig,
) -> Result<(), Error> {
    use actix_web::http::header::{HOST, ORIGIN};
    let refuse = |m: String| Err(Error::new(ErrorCode::OriginNotAllowed, m));
    let host_header = headers.get(HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !host_header.is_empty() {
        let host = host_of(host_header);
        if !(loopback(&host) || server.allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(&host))) {
            return refuse(format!(
                "Host {host:?} is not a loopback name: without tokens petal answers local clients only (add the \
                 name to server.allowed_hosts, or configure auth.tokens)"
            ));
        }
    }
    let allowed_origin =
        |o: &str| server.allowed_origins.iter().any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(o));
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("null").trim();
        if allowed_origin(origin) {
            return Ok(());
        }
        let authority = origin.split_once("://").map(|(_, a)| a).unwrap_or("");
        if origin == "null" || host_header.is_empty() || !authority.eq_ignore_ascii_case(host_header.trim()) {
            return refuse(format!(
                "requests from the web page of origin {origin:?} are refused: without tokens petal answers its own \
                 origin only (add it to server.allowed_origins, or configure auth.tokens)"
            ));
        }
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        if !matches!(site.trim(), "same-origin" | "none") {
            return refuse(format!(
                "a browser request from another site (Sec-Fetch-Site: {site}) is refused: without tokens petal \
                 answers its own origin only"
            ));
        }
    }
    Ok(())
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
    fn no_token_mode_answers_local_clients_only() {
        use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
        let server = crate::config::ServerConfig {
            allowed_hosts: vec!["petal.internal".into()],
            allowed_origins: vec!["http://console.internal:3000".into()],
            ..Default::default()
        };
        let headers = |pairs: &[(&str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
            }
            h
        };
        for ok in [
            vec![("host", "127.0.0.1:8080")],
            vec![("host", "localhost")],
            vec![("host", "[::1]:8080")],
            vec![("host", "PETAL.internal:80")],
            vec![("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080"), ("sec-fetch-site", "same-origin")],
            vec![
                ("host", "localhost:8080"),
                ("origin", "http://console.internal:3000"),
                ("sec-fetch-site", "cross-site"),
            ],
            vec![("host", "localhost:8080"), ("sec-fetch-site", "none")],
            vec![],
        ] {
            local_only(&headers(&ok), &server).unwrap_or_else(|e| panic!("{ok:?}: {}", e.message));
        }
        for bad in [
            vec![("host", "evil.example")],
            vec![("host", "evil.example:8080")],
            vec![("host", "127.0.0.1.evil.example")],
            vec![("host", "127.0.0.1:8080"), ("origin", "https://evil.example")],
            vec![("host", "127.0.0.1:8080"), ("origin", "null")],
            vec![("host", "127.0.0.1:8080"), ("origin", "http://localhost:3000")],
            vec![("host", "127.0.0.1:8080"), ("sec-fetch-site", "cross-site")],
            vec![("host", "127.0.0.1:8080"), ("sec-fetch-site", "same-site")],
        ] {
            let e = local_only(&headers(&bad), &server).unwrap_err();
            assert_eq!(e.code, ErrorCode::OriginNotAllowed, "{bad:?}");
        }
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
        assert!(required(&Method::GET, "/healthz").is_none());
        assert!(required(&Method::GET, "/docs/index.html").is_none());
        assert_eq!(required(&Method::POST, "/classify"), Some(&[Scope::Classify][..]));
        assert_eq!(required(&Method::GET, "/jobs/x/events"), Some(&[Scope::Train][..]));
        assert_eq!(required(&Method::PUT, "/models/m/aliases/production"), Some(&[Scope::Admin][..]));
        assert_eq!(required(&Method::GET, "/models/m"), Some(&[Scope::Classify, Scope::Train][..]));
        assert_eq!(required(&Method::GET, "/anything/else").map(<[Scope]>::len), Some(3), "unknown paths need a token");
    }
}

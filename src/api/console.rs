//! The web console at `/`: a page and its script, style and icon, compiled into the binary from
//! `console/`. It uses the public API only (the same calls a client makes, with the tab's token),
//! so it needs no token to load; each asset's URL carries its content hash (`?v=`), so a browser
//! keeps it until the binary changes, and the page itself is revalidated every time.
use std::collections::BTreeMap;
use std::sync::OnceLock;

use actix_web::http::header::{CACHE_CONTROL, ETAG};
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::api::not_modified;
use crate::error::{Error, ErrorBody, ErrorCode, Result};

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:literal) => {
        Asset { name: $name, content_type: $type, bytes: include_bytes!(concat!("../../console/", $name)) }
    };
}

const ASSETS: [Asset; 3] = [
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "text/css; charset=utf-8"),
    asset!("icon.svg", "image/svg+xml"),
];

const INDEX: &str = include_str!("../../console/index.html");

/// The console's pages may load only their own assets, call only their own origin, and be framed
/// by nobody: no inline script or style, no plugin, no form posting elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; \
                   connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// Each asset's version: the first 16 hex digits of its sha256.
fn versions() -> &'static BTreeMap<&'static str, String> {
    static VERSIONS: OnceLock<BTreeMap<&'static str, String>> = OnceLock::new();
    VERSIONS.get_or_init(|| {
        ASSETS.iter().map(|a| (a.name, crate::foundation::hash::sha256_hex(a.bytes)[..16].to_string())).collect()
    })
}

/// The page, with `{{name}}` replaced by each asset's versioned URL.
fn page() -> &'static (String, String) {
    static PAGE: OnceLock<(String, String)> = OnceLock::new();
    PAGE.get_or_init(|| {
        let mut html = INDEX.to_string();
        for (name, version) in versions() {
            html = html.replace(&format!("{{{{{name}}}}}"), &format!("/console/{name}?v={version}"));
        }
        let etag = crate::foundation::hash::sha256_hex(html.as_bytes())[..16].to_string();
        (html, etag)
    })
}

/// A console response: the body (or 304), its ETag, caching and the security headers.
fn respond(
    req: &HttpRequest,
    etag: &str,
    cache: &'static str,
    content_type: &str,
    body: &'static [u8],
) -> HttpResponse {
    let fresh = not_modified(req, etag);
    let mut response = if fresh { HttpResponse::NotModified() } else { HttpResponse::Ok() };
    response
        .insert_header((ETAG, format!("\"{etag}\"")))
        .insert_header((CACHE_CONTROL, cache))
        .insert_header(("content-security-policy", CSP))
        .insert_header(("x-content-type-options", "nosniff"))
        .insert_header(("referrer-policy", "no-referrer"))
        .insert_header(("x-frame-options", "DENY"));
    if fresh {
        response.finish()
    } else {
        response.content_type(content_type).body(body)
    }
}

#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    operation_id = "console",
    summary = "The web console (HTML)",
    description = "A page for people: try a model on dropped images, check and submit a dataset and watch the job \
                   train, compare versions, read their cards and evaluations, and move aliases. It calls this API \
                   and nothing else (with the token given in the tab, kept for the tab only); loading it needs no \
                   token. Revalidated on every load (`ETag`, `If-None-Match`); its assets are cached until they change.",
    responses(
        (status = 200, description = "The console's page.", content_type = "text/html", body = String,
         example = "<!doctype html><html lang=\"en\">…</html>"),
        (status = 304, description = "Not modified: the If-None-Match ETag is the page's.")
    )
)]
#[get("/")]
pub async fn console(req: HttpRequest) -> HttpResponse {
    let (html, etag) = page();
    respond(&req, etag, "no-cache", "text/html; charset=utf-8", html.as_bytes())
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AssetQuery {
    /// The asset's version, as the page links it: with the current one the answer may be kept for
    /// a year; with another (or none) it is revalidated each time.
    pub v: Option<String>,
}

#[utoipa::path(
    get,
    path = "/console/{asset}",
    tag = "console",
    operation_id = "console_asset",
    summary = "A file of the web console",
    description = "The console's script, style sheet and icon (`app.js`, `app.css`, `icon.svg`), as the page links \
                   them (`ETag`, `If-None-Match`).",
    params(("asset" = String, Path, description = "The file's name.", pattern = "^[a-z0-9-]+\\.[a-z]+$"),
           AssetQuery),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript", example = "\"use strict\";"),
            (String = "text/css", example = ":root { color: #1b1b1f; }"),
            (String = "image/svg+xml", example = "<svg xmlns=\"http://www.w3.org/2000/svg\"></svg>")
        )),
        (status = 304, description = "Not modified: the If-None-Match ETag is the file's."),
        (status = 404, description = "The console has no such file.", body = ErrorBody,
         example = json!({"error": {"code": "route_not_found", "message": "the console has no file nope.js"}}))
    )
)]
#[get("/console/{asset}")]
pub async fn console_asset(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<AssetQuery>,
) -> Result<HttpResponse> {
    let name = path.into_inner();
    let Some(asset) = ASSETS.iter().find(|a| a.name == name) else {
        return Err(Error::new(ErrorCode::RouteNotFound, format!("the console has no file {name}")));
    };
    let version = &versions()[asset.name];
    let cache =
        if query.v.as_deref() == Some(version.as_str()) { "public, max-age=31536000, immutable" } else { "no-cache" };
    Ok(respond(&req, version, cache, asset.content_type, asset.bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The page links every asset by its version, and names no asset the console lacks.
    #[test]
    fn the_page_links_each_asset_by_its_version() {
        let (html, _) = page();
        for (name, version) in versions() {
            assert!(html.contains(&format!("/console/{name}?v={version}")), "{name}");
        }
        assert!(!html.contains("{{"), "an asset the console lacks: {html}");
        // No inline script or style, which the Content-Security-Policy would block.
        assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("<style"), "{html}");
    }
}

//! The web console: one HTML page, a stylesheet and a small vanilla-JS module, embedded in
//! the binary (no CDN, works offline). The assets are served WITHOUT the token: they hold
//! no data, and the page sends the token (`Authorization: Bearer`) on every `/api/v1/` call,
//! which still needs it. Each asset goes out with a strict Content-Security-Policy (only
//! this origin's script and style, no inline script, no framing) and no referrer, so the
//! `?token=` of a first load never leaves the page.

use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX: &str = include_str!("console/index.html");
const APP_JS: &str = include_str!("console/app.js");
const APP_CSS: &str = include_str!("console/app.css");
const ICON: &str = include_str!("console/icon.svg");

/// `default-src 'self'`, and nothing looser: no inline script or style, no eval, no frames.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The asset routes, outside the token middleware.
pub(super) fn router() -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/app.js", get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }))
        .route("/console/app.css", get(|| async { asset("text/css; charset=utf-8", APP_CSS) }))
        .route("/console/icon.svg", get(|| async { asset("image/svg+xml", ICON) }))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

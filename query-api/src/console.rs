//! The operator console at `/console`: a page, a script and a style sheet,
//! compiled into the binary (no toolchain beyond cargo builds or serves
//! it). Everything it shows and does is a call of the two public APIs with
//! the operator's token, the same call a script would make; it holds no
//! state of its own beyond that token, in the tab's session storage.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Serialize;

use crate::AppState;

const PAGE: &str = include_str!("../console/index.html");
const SCRIPT: &str = include_str!("../console/console.js");
const STYLE: &str = include_str!("../console/console.css");

/// Where the console finds the command API (sign-in, commands).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Settings {
    /// As configured (`--console-command-url`).
    pub command_url: Option<String>,
    /// This process's command API port: the console uses it on its own
    /// host when no URL is configured.
    pub command_port: Option<u16>,
}

/// The console's own pages may load nothing from elsewhere; they talk to
/// the APIs, which may be on another port.
const POLICY: &str = "default-src 'self'; connect-src *; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

pub async fn to_page() -> Redirect {
    Redirect::permanent("/console/")
}

pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

pub async fn settings(State(state): State<AppState>) -> Json<Settings> {
    Json(state.console.clone())
}

//! The admin listener: `/healthz`, `/readyz`, `/metrics`, and the operator console (`/`, its
//! two assets and `/api/*`, see `console`).

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use super::console::{self, refusals::RefusalLog, reloads::ReloadHistory};
use super::metrics::Metrics;
use super::LiveConfig;

pub struct Admin {
    pub live: LiveConfig,
    pub metrics: Arc<Metrics>,
    pub refusals: Arc<RefusalLog>,
    pub reloads: Arc<ReloadHistory>,
}

/// The largest `POST /api/explain` body read (a token is at most a few KiB).
const MAX_EXPLAIN_BODY: usize = 64 * 1024;

pub(super) fn reply(
    status: u16,
    content_type: &str,
    body: impl Into<Vec<u8>>,
) -> Response<Vec<u8>> {
    let body = body.into();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .header(http::header::CACHE_CONTROL, "no-store")
        .body(body)
        .expect("static response parts")
}

/// A console asset or page: served under the console's CSP, never sniffed, never framed.
fn console_reply(content_type: &str, body: &str) -> Response<Vec<u8>> {
    let mut r = reply(200, content_type, body);
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_SECURITY_POLICY,
        http::HeaderValue::from_static(console::CONTENT_SECURITY_POLICY),
    );
    h.insert(
        http::header::X_CONTENT_TYPE_OPTIONS,
        http::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        http::header::REFERRER_POLICY,
        http::HeaderValue::from_static("no-referrer"),
    );
    r
}

fn json_reply(status: u16, v: &serde_json::Value) -> Response<Vec<u8>> {
    reply(status, "application/json", v.to_string())
}

/// The request body, up to `MAX_EXPLAIN_BODY` bytes (`None` past it or on a read error).
async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await.ok()? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_EXPLAIN_BODY {
            return None;
        }
    }
    Some(body)
}

impl Admin {
    /// `/`, its assets and `/api/*`; `None` for other paths.
    async fn console(&self, session: &mut ServerSession, path: &str) -> Option<Response<Vec<u8>>> {
        let post = session.req_header().method == http::Method::POST;
        Some(match (path, post) {
            ("/", false) => console_reply("text/html; charset=utf-8", console::INDEX_HTML),
            ("/console.css", false) => {
                console_reply("text/css; charset=utf-8", console::CONSOLE_CSS)
            }
            ("/console.js", false) => {
                console_reply("text/javascript; charset=utf-8", console::CONSOLE_JS)
            }
            ("/api/routes", false) => {
                let live = self.live.load();
                json_reply(
                    200,
                    &console::routes(&live.snapshot, &self.metrics.request_counts()),
                )
            }
            ("/api/refusals", false) => json_reply(
                200,
                &serde_json::json!({ "refusals": self.refusals.latest() }),
            ),
            ("/api/keys", false) => json_reply(200, &console::keys(&self.live.load().snapshot)),
            ("/api/reloads", false) => {
                json_reply(200, &serde_json::json!({ "reloads": self.reloads.list() }))
            }
            ("/api/explain", true) => {
                let Some(body) = read_body(session).await else {
                    let e = serde_json::json!({ "error": "the body is larger than 64 KiB or could not be read" });
                    return Some(json_reply(400, &e));
                };
                let live = self.live.load_full();
                match console::explain(&live.snapshot, &body, crate::snapshot::unix_now()) {
                    Ok(answer) => json_reply(200, &answer),
                    Err(e) => json_reply(400, &serde_json::json!({ "error": e.to_string() })),
                }
            }
            ("/api/explain", false) => {
                let e = serde_json::json!({ "error": "POST a JSON body to /api/explain" });
                let mut r = json_reply(405, &e);
                r.headers_mut()
                    .insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
                r
            }
            _ => return None,
        })
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        if let Some(r) = self.console(session, &path).await {
            return r;
        }
        match path.as_str() {
            "/healthz" => reply(200, "text/plain", "ok\n"),
            "/readyz" => {
                let live = self.live.load();
                let snapshot = &live.snapshot;
                if !super::reload::WATCHING.load(std::sync::atomic::Ordering::Acquire) {
                    reply(503, "text/plain", "not ready: starting\n")
                } else if snapshot.verifier.keys_ready() {
                    reply(
                        200,
                        "text/plain",
                        format!("ready (config generation {})\n", snapshot.generation),
                    )
                } else {
                    let waiting: Vec<&str> = snapshot
                        .verifier
                        .issuers
                        .iter()
                        .filter(|i| !i.keys.is_loaded())
                        .map(|i| i.issuer.as_str())
                        .collect();
                    reply(
                        503,
                        "text/plain",
                        format!("not ready: no keys yet for {}\n", waiting.join(", ")),
                    )
                }
            }
            "/metrics" => reply(200, "text/plain; version=0.0.4", self.metrics.render()),
            _ => reply(
                404,
                "text/plain",
                "not found: try /, /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

//! The admin listener: `/healthz`, `/readyz`, `/metrics`.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::protocols::http::ServerSession;

use super::metrics::Metrics;
use super::LiveConfig;

pub struct Admin {
    pub live: LiveConfig,
    pub metrics: Arc<Metrics>,
}

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

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
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
                "not found: try /healthz, /readyz or /metrics\n",
            ),
        }
    }
}

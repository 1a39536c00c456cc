//! The demo's contacts API: a small JSON API that also echoes what it received (method, target,
//! headers), so `scopegate demo` shows exactly what the proxy forwarded. It is served by
//! Pingora's own HTTP/1.1 code on a listener the demo binds before the proxy starts.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use serde_json::{json, Value};

pub struct ContactsApi;

fn answer(method: &str, path: &str) -> (u16, Value) {
    match (method, path) {
        ("GET" | "HEAD", "/contacts") => (
            200,
            json!([{"id": 1, "name": "Ada Lovelace"}, {"id": 2, "name": "Alan Turing"}]),
        ),
        ("GET" | "HEAD", p) if p.starts_with("/contacts/") => {
            (200, json!({"id": &p[10..], "name": "Ada Lovelace"}))
        }
        ("POST", "/contacts") => (201, json!({"created": true})),
        ("DELETE", p) if p.starts_with("/contacts/") => (200, json!({"deleted": &p[10..]})),
        (_, "/health") => (200, json!({"status": "ok"})),
        _ => (404, json!({"error": "not found"})),
    }
}

#[async_trait]
impl ServeHttp for ContactsApi {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, data) = answer(req.method.as_str(), req.uri.path());
        let headers: serde_json::Map<String, Value> = req
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), json!(String::from_utf8_lossy(v.as_bytes()))))
            .collect();
        let saw = json!({ "method": req.method.as_str(), "target": req.uri.to_string(), "headers": headers });
        let body = json!({ "data": data, "upstream_saw": saw })
            .to_string()
            .into_bytes();
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .expect("static response parts")
    }
}

/// Serves `ContactsApi` on a listener bound by the caller, so its port is known (and
/// accepting) before the proxy in front of it starts.
pub struct DemoApiService(pub std::sync::Mutex<Option<std::net::TcpListener>>);

#[async_trait]
impl BackgroundService for DemoApiService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(listener) = self.0.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => return tracing::error!("demo API listener: {e}"),
        };
        let app = Arc::new(ContactsApi);
        loop {
            let stream = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((s, _)) => s,
                    Err(_) => continue,
                },
                _ = shutdown.changed() => return,
            };
            let (app, shutdown) = (app.clone(), shutdown.clone());
            tokio::spawn(async move {
                // Keep-alive: the app hands the connection back after each response.
                let mut next: Option<Stream> = Some(Box::new(L4Stream::from(stream)));
                while let Some(s) = next {
                    next = app.process_new(s, &shutdown).await;
                }
            });
        }
    }
}

//! The tests' upstream: a small HTTP/1.1 server (keep-alive, Content-Length bodies) that hands
//! each request to a handler, so a test sees exactly what the proxy forwarded. Test code only.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct EchoRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl EchoRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request as JSON: what the upstream saw.
    pub fn to_json(&self) -> serde_json::Value {
        let headers: serde_json::Map<String, serde_json::Value> = self
            .headers
            .iter()
            .map(|(n, v)| (n.to_ascii_lowercase(), serde_json::Value::String(v.clone())))
            .collect();
        serde_json::json!({ "method": self.method, "target": self.target, "headers": headers })
    }
}

pub struct EchoResponse {
    pub status: u16,
    pub body: Vec<u8>,
    /// Extra response headers.
    pub headers: Vec<(String, String)>,
    /// Wait this long before answering (for timeout tests).
    pub delay: Option<Duration>,
}

pub type Handler = Arc<dyn Fn(&EchoRequest) -> EchoResponse + Send + Sync>;

/// Serve HTTP/1.1 (keep-alive, Content-Length bodies) with `handler` until the task is dropped.
pub async fn serve(listener: TcpListener, handler: Handler) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let _ = serve_connection(stream, handler).await;
        });
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

async fn serve_connection(mut stream: TcpStream, handler: Handler) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let head_end = loop {
            if let Some(end) = find_head_end(&buf) {
                break end;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or("").split(' ');
        let method = first.next().unwrap_or("").to_string();
        let target = first.next().unwrap_or("").to_string();
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut req = EchoRequest {
            method,
            target,
            headers,
            body: Vec::new(),
        };
        let len: usize = req
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < head_end + len {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        req.body = buf[head_end..head_end + len].to_vec();
        buf.drain(..head_end + len);

        let resp = handler(&req);
        if let Some(d) = resp.delay {
            tokio::time::sleep(d).await;
        }
        let close = req
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let extra: String = resp
            .headers
            .iter()
            .map(|(n, v)| format!("{n}: {v}\r\n"))
            .collect();
        // JSON unless the handler names its own type.
        let own_type = resp
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
        let mut out = format!(
            "HTTP/1.1 {} {}\r\n{}content-length: {}\r\n{extra}{}\r\n",
            resp.status,
            reason(resp.status),
            if own_type {
                ""
            } else {
                "content-type: application/json\r\n"
            },
            resp.body.len(),
            if close { "connection: close\r\n" } else { "" }
        )
        .into_bytes();
        if req.method != "HEAD" {
            out.extend_from_slice(&resp.body);
        }
        stream.write_all(&out).await?;
        if close {
            return Ok(());
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        404 => "Not Found",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// A server started by `spawn_upstream`; it stops (closing its port and connections) on
/// `stop()` or when dropped.
pub struct UpstreamHandle {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl UpstreamHandle {
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Keep serving for the rest of the process.
    pub fn detach(mut self) -> SocketAddr {
        if let Some(tx) = self.stop.take() {
            std::mem::forget(tx);
        }
        self.thread.take();
        self.addr
    }
}

impl Drop for UpstreamHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Start `serve` on a thread of its own, on `listener` (e.g. 127.0.0.1:0).
pub fn spawn_upstream_on(
    listener: std::net::TcpListener,
    handler: Handler,
) -> std::io::Result<UpstreamHandle> {
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("upstream".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("listener");
                tokio::select! {
                    _ = serve(listener, handler) => {}
                    _ = rx => {}
                }
            });
            // Dropping the runtime here closes the listener and every connection.
        })?;
    Ok(UpstreamHandle {
        addr,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// Start `serve` on 127.0.0.1 and an ephemeral port, for the rest of the process.
pub fn spawn_upstream(handler: Handler) -> std::io::Result<SocketAddr> {
    Ok(spawn_upstream_on(std::net::TcpListener::bind("127.0.0.1:0")?, handler)?.detach())
}

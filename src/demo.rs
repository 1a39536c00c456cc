//! `scopegate demo`, and the small HTTP/1.1 server behind it: a contacts API that answers in
//! JSON and echoes what it received (method, path, headers), so the demo shows exactly what the
//! proxy forwarded. Tests and the load bench use the same server as their upstream.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::mint;

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

/// The demo contacts API: a few routes, each answer carrying the echo of the request.
pub fn contacts_handler() -> Handler {
    Arc::new(|req: &EchoRequest| {
        let path = req.target.split('?').next().unwrap_or("");
        let (status, data) = match (req.method.as_str(), path) {
            ("GET" | "HEAD", "/contacts") => (
                200,
                serde_json::json!([{"id": 1, "name": "Ada Lovelace"}, {"id": 2, "name": "Alan Turing"}]),
            ),
            ("GET" | "HEAD", p) if p.starts_with("/contacts/") => (
                200,
                serde_json::json!({"id": &p[10..], "name": "Ada Lovelace"}),
            ),
            ("POST", "/contacts") => (201, serde_json::json!({"created": true})),
            ("DELETE", p) if p.starts_with("/contacts/") => {
                (200, serde_json::json!({"deleted": &p[10..]}))
            }
            (_, "/health") => (200, serde_json::json!({"status": "ok"})),
            _ => (404, serde_json::json!({"error": "not found"})),
        };
        let body = serde_json::json!({ "data": data, "upstream_saw": req.to_json() });
        EchoResponse {
            status,
            body: body.to_string().into_bytes(),
            headers: Vec::new(),
            delay: None,
        }
    })
}

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
        let mut out = format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}{}\r\n",
            resp.status,
            reason(resp.status),
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

fn table(v: Option<&mut toml::Value>) -> anyhow::Result<&mut toml::Table> {
    v.and_then(toml::Value::as_table_mut)
        .ok_or_else(|| anyhow::anyhow!("config/scopegate.toml changed shape"))
}

/// The example shipped in `config/`: the demo runs exactly these routes.
const EXAMPLE_CONFIG: &str = include_str!("../config/scopegate.toml");

/// Write the demo's config (the shipped example, pointed at `listen` and `upstream`), key and
/// JWKS into `dir`.
pub fn write_demo_files(dir: &Path, listen: &str, upstream: SocketAddr) -> anyhow::Result<()> {
    let (pem, jwks) = mint::generate_rsa_key("demo-key");
    std::fs::write(dir.join("signing-key.pem"), pem)?;
    std::fs::write(dir.join("jwks.json"), jwks)?;
    let mut config: toml::Table = toml::from_str(EXAMPLE_CONFIG)?;
    table(config.get_mut("server"))?.insert("listen".into(), listen.into());
    let upstreams = table(config.get_mut("upstreams"))?;
    table(upstreams.get_mut("contacts"))?
        .insert("servers".into(), vec![upstream.to_string()].into());
    let text = format!(
        "# Written by `scopegate demo` from config/scopegate.toml.\n{}",
        toml::to_string(&config)?
    );
    std::fs::write(dir.join("scopegate.toml"), text)?;
    Ok(())
}

pub fn run(listen: &str) -> anyhow::Result<()> {
    let upstream = spawn_upstream(contacts_handler())?;
    let dir = std::env::temp_dir().join(format!("scopegate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_demo_files(&dir, listen, upstream)?;
    let pem = std::fs::read(dir.join("signing-key.pem"))?;
    let now = crate::snapshot::unix_now();
    let token = |scope: &str| {
        let req = mint::TokenRequest {
            kid: Some("demo-key".into()),
            scope: scope.into(),
            iss: mint::DEFAULT_ISSUER.into(),
            aud: mint::DEFAULT_AUDIENCE.into(),
            sub: "demo-user".into(),
            ttl: Duration::from_secs(3600),
        };
        mint::mint(&pem, &req, now)
    };
    let reader = token("read:contacts")?;
    let admin = token("read:contacts write:contacts delete:contacts")?;
    let base = format!("http://{listen}");
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        r#"
scopegate demo: proxy on {base} in front of a demo contacts API on {upstream}
config, key and JWKS in {dir}

  # 200: the token carries read:contacts
  curl -i {base}/contacts -H "Authorization: Bearer {reader}"

  # 401: no token
  curl -i {base}/contacts

  # 403: a read-only token cannot delete (needs delete:contacts)
  curl -i -X DELETE {base}/contacts/1 -H "Authorization: Bearer {reader}"

  # 200: this token carries delete:contacts
  curl -i -X DELETE {base}/contacts/1 -H "Authorization: Bearer {admin}"

  # 200 without a token: /health is a public route
  curl -i {base}/health

  # mint your own: scopegate token --key {key} --kid demo-key --scope "read:contacts"
"#,
        dir = dir.display(),
        key = dir.join("signing-key.pem").display(),
    )?;
    drop(out);
    server::run_or_exit(&dir.join("scopegate.toml"))
}

use crate::server;

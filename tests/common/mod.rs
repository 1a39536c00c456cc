//! Test harness: a real echo upstream, real RS256 keys and tokens, the real `scopegate` binary
//! on ephemeral ports, and a raw HTTP/1.1 client (raw, so tests can send targets that other
//! clients would "fix" before sending).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
#[allow(dead_code)]
pub mod dpop;
mod echo;
pub mod oidc;
pub mod process;
pub mod redis;
#[allow(unused_imports)]
pub use dpop::{ath, dpop_api, dpop_call, unique, DpopKey};
pub use echo::{
    spawn_upstream, spawn_upstream_on, EchoRequest, EchoResponse, Handler, UpstreamHandle,
};
#[allow(unused_imports)]
pub use oidc::{oidc_dir, start_oidc_provider};
pub use process::{ProcessGroup, SpawnGroup};
#[allow(unused_imports)]
pub use redis::Redis;
use serde_json::{json, Value};

pub const ISS: &str = "https://issuer.test/";
pub const AUD: &str = "https://contacts.test";
pub const KID: &str = "test-key-1";

pub struct TestKey {
    pub pem: String,
    pub jwks: String,
}

/// One RSA key for the whole test binary (generation is the slow part).
pub fn key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let (pem, jwks) = scopegate::cli::mint::generate_rsa_key(KID);
        TestKey { pem, jwks }
    })
}

/// A second key the proxy does not trust.
pub fn other_key() -> &'static TestKey {
    static KEY: OnceLock<TestKey> = OnceLock::new();
    KEY.get_or_init(|| {
        let (pem, jwks) = scopegate::cli::mint::generate_rsa_key(KID);
        TestKey { pem, jwks }
    })
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims of a valid token carrying `scope`; tests change fields to break it.
pub fn claims(scope: &str) -> Value {
    json!({ "iss": ISS, "aud": AUD, "sub": "user-1", "scope": scope, "exp": now() + 600, "iat": now() })
}

pub fn sign_with(key: &TestKey, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_rsa_pem(key.pem.as_bytes()).unwrap(),
    )
    .unwrap()
}

pub fn sign(claims: &Value) -> String {
    sign_with(key(), Some(KID), claims)
}

/// A valid token carrying `scope`, with claims of `extra` added or replaced.
pub fn token_with(scope: &str, extra: Value) -> String {
    let mut c = claims(scope);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    sign(&c)
}

pub fn token(scope: &str) -> String {
    sign(&claims(scope))
}

pub fn b64(v: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(v)
}

/// A compact JWS assembled by hand (header and payload as JSON, signature as given).
pub fn raw_jws(header: &Value, payload: &Value, signature: &str) -> String {
    format!("{}.{signature}", signing_input(header, payload))
}

fn signing_input(header: &Value, payload: &Value) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes())
    )
}

/// A compact JWS with any header and payload, signed with `key` under `alg`.
pub fn signed_jws(header: &Value, payload: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let input = signing_input(header, payload);
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{signature}")
}

/// The echo upstream: answers 200 with a JSON description of the request it received, and
/// waits 2 s first when the path starts with /slow.
pub fn echo_handler(id: &'static str) -> Handler {
    Arc::new(move |req: &EchoRequest| {
        let mut body = req.to_json();
        body["upstream"] = json!(id);
        EchoResponse {
            status: 200,
            body: body.to_string().into_bytes(),
            headers: Vec::new(),
            delay: req
                .target
                .starts_with("/slow")
                .then(|| Duration::from_secs(2)),
        }
    })
}

pub fn start_echo(id: &'static str) -> SocketAddr {
    spawn_upstream(echo_handler(id)).unwrap()
}

/// A port nothing listens on.
/// A port no process listens on now, and never handed out before in this test binary: tests
/// run in parallel, and the kernel may offer a port another test was given but has not bound
/// yet (one proxy then answered on another's admin port).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub const ROUTES: &str = r#"
[[routes]]
methods = ["GET"]
path = "/health"
public = true

[[routes]]
path = "/public/{*rest}"
public = true

[[routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]

[[routes]]
methods = ["GET"]
path = "/contacts/{id}"
scopes = ["read:contacts"]

[[routes]]
methods = ["POST"]
path = "/contacts"
scopes = ["write:contacts"]

[[routes]]
methods = ["DELETE"]
path = "/contacts/{id}"
scopes = ["delete:contacts"]

[[routes]]
methods = ["GET"]
path = "/admin/{*rest}"
scopes = ["read:contacts"]
any_scopes = ["admin", "contacts:all"]

[[routes]]
methods = ["GET"]
path = "/me"

[[routes]]
methods = ["GET"]
path = "/slow"
"#;

/// The issuer block of the standard config: keys from jwks.json beside the config.
pub fn file_issuer() -> String {
    format!("[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\", \"https://other-api.test\"]\njwks_file = \"jwks.json\"\n")
}

/// A config for `upstream`, with the standard routes; `extra` is appended (e.g. [forward]).
pub fn config(listen: u16, upstream_servers: &[SocketAddr], extra: &str) -> String {
    config_full(listen, None, upstream_servers, &file_issuer(), extra)
}

pub fn config_full(
    listen: u16,
    admin: Option<u16>,
    upstream_servers: &[SocketAddr],
    issuers: &str,
    extra: &str,
) -> String {
    let servers: Vec<String> = upstream_servers
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let admin = admin
        .map(|p| format!("admin_listen = \"127.0.0.1:{p}\""))
        .unwrap_or_default();
    format!(
        r#"
[server]
listen = "127.0.0.1:{listen}"
{admin}
threads = 1
shutdown_grace_seconds = 2

{issuers}

[upstreams.contacts]
servers = [{servers}]
read_timeout_ms = 500
connect_timeout_ms = 500

{extra}
{ROUTES}
"#,
        servers = servers.join(", ")
    )
}

pub struct Proxy {
    // First, so the proxy is stopped before its directory is removed.
    child: ProcessGroup,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Proxy {
    /// Start the real binary with `config_text` (jwks.json is written beside it).
    pub fn start(config_text: &str, port: u16) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwks.json"), &key().jwks).unwrap();
        std::fs::write(dir.path().join("scopegate.toml"), config_text).unwrap();
        Proxy::start_in(dir, port)
    }

    pub fn start_in(dir: tempfile::TempDir, port: u16) -> Proxy {
        Proxy::start_in_with_env(dir, port, &[])
    }

    pub fn start_in_with_env(dir: tempfile::TempDir, port: u16, env: &[(&str, &str)]) -> Proxy {
        let log = std::fs::File::create(dir.path().join("proxy.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_scopegate"))
            .args(["run", "--config"])
            .arg(dir.path().join("scopegate.toml"))
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn_group()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut proxy = Proxy { child, addr, dir };
        proxy.wait_listening();
        proxy
    }

    /// The standard setup: an echo upstream and the standard routes.
    pub fn standard(extra: &str) -> Proxy {
        let upstream = start_echo("a");
        let port = free_port();
        Proxy::start(&config(port, &[upstream], extra), port)
    }

    /// Wait until the proxy listener, and the admin listener when the config has one, accept.
    fn wait_listening(&mut self) {
        let config = std::fs::read_to_string(self.config_path()).unwrap_or_default();
        let admin: Option<SocketAddr> = config
            .lines()
            .find_map(|l| l.trim().strip_prefix("admin_listen = \""))
            .and_then(|rest| rest.trim_end_matches('"').parse().ok());
        let deadline = Instant::now() + Duration::from_secs(20);
        for addr in std::iter::once(self.addr).chain(admin) {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    panic!("scopegate exited with {status}: {}", self.log());
                }
                if TcpStream::connect(addr).is_ok() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "scopegate did not listen on {addr}: {}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // With an admin listener, also until the config watcher is in place (/readyz stops
        // saying "starting"), so a test's first edit of the file is seen.
        if let Some(admin) = admin {
            while Instant::now() < deadline
                && String::from_utf8_lossy(&http_get(admin, "/readyz").body)
                    .contains("not ready: starting")
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("proxy.log")).unwrap_or_default()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("scopegate.toml")
    }

    pub fn child(&mut self) -> &mut ProcessGroup {
        &mut self.child
    }

    pub fn get(&self, target: &str, token: Option<&str>) -> Response {
        self.request("GET", target, token, "")
    }

    pub fn request(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        extra_headers: &str,
    ) -> Response {
        self.request_on(method, "api.test", target, token, extra_headers)
    }

    /// A request naming `host`, with a bearer token and extra header lines if given.
    pub fn request_on(
        &self,
        method: &str,
        host: &str,
        target: &str,
        token: Option<&str>,
        extra_headers: &str,
    ) -> Response {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        self.send(&format!(
            "{method} {target} HTTP/1.1\r\nHost: {host}\r\n{auth}{extra_headers}\r\n"
        ))
    }

    /// Send raw bytes on a new connection and read one response.
    pub fn send(&self, raw: &str) -> Response {
        let mut c = Client::connect(self.addr);
        c.send(raw.as_bytes())
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// What the echo upstream received (only on forwarded responses).
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_str()
            .map(str::to_string)
    }

    pub fn upstream_target(&self) -> String {
        self.json()["target"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One keep-alive connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    /// A client on a connection already made (and maybe already written to).
    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// The connection back, e.g. to see when the server closes it.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    /// A connection from another loopback address (`127.0.0.2` and so on).
    pub fn connect_from(addr: SocketAddr, source: std::net::IpAddr) -> Client {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stream = rt.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket.bind(SocketAddr::new(source, 0)).unwrap();
            socket.connect(addr).await.unwrap()
        });
        let stream = stream.into_std().unwrap();
        stream.set_nonblocking(false).unwrap();
        Client::from_stream(stream)
    }

    pub fn send(&mut self, raw: &[u8]) -> Response {
        self.stream.write_all(raw).unwrap();
        let head_only = raw.starts_with(b"HEAD ");
        self.read_response(head_only)
    }

    pub fn read_response(&mut self, head_only: bool) -> Response {
        let mut chunk = [0u8; 16384];
        let head_end = loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = self.stream.read(&mut chunk).expect("reading response");
            assert!(
                n > 0,
                "connection closed before a response; got {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
            .collect();
        let chunked = headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        if chunked && !head_only {
            self.buf.drain(..head_end);
            let body = self.read_chunked();
            return Response {
                status,
                headers,
                body,
            };
        }
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let len = if head_only { 0 } else { len };
        while self.buf.len() < head_end + len {
            let n = self.stream.read(&mut chunk).expect("reading body");
            assert!(n > 0, "connection closed mid-body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        let body = self.buf[head_end..head_end + len].to_vec();
        self.buf.drain(..head_end + len);
        Response {
            status,
            headers,
            body,
        }
    }
}

impl Client {
    /// Read until `buf` holds `n` bytes (panics when the connection closes first).
    fn fill(&mut self, n: usize) {
        let mut chunk = [0u8; 16384];
        while self.buf.len() < n {
            let r = self.stream.read(&mut chunk).expect("reading body");
            assert!(r > 0, "connection closed mid-body");
            self.buf.extend_from_slice(&chunk[..r]);
        }
    }

    /// A line ending in CRLF at the start of `buf`, without it.
    fn line(&mut self) -> String {
        let mut chunk = [0u8; 16384];
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return line;
            }
            let r = self.stream.read(&mut chunk).expect("reading chunked body");
            assert!(r > 0, "connection closed mid-body");
            self.buf.extend_from_slice(&chunk[..r]);
        }
    }

    /// A chunked body (RFC 9112 §7.1), decoded; trailers are read and dropped.
    fn read_chunked(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let line = self.line();
            let size = line.split(';').next().unwrap().trim();
            let size = usize::from_str_radix(size, 16).expect("chunk size");
            if size == 0 {
                while !self.line().is_empty() {}
                return body;
            }
            self.fill(size + 2);
            body.extend_from_slice(&self.buf[..size]);
            assert_eq!(
                &self.buf[size..size + 2],
                b"\r\n",
                "chunk data ends in CRLF"
            );
            self.buf.drain(..size + 2);
        }
    }
}

/// GET on a fresh connection to any address.
pub fn http_get(addr: SocketAddr, target: &str) -> Response {
    Client::connect(addr).send(format!("GET {target} HTTP/1.1\r\nHost: admin\r\n\r\n").as_bytes())
}

pub fn admin_addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// The value of one series in a Prometheus text exposition (0 when absent).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Poll `f` until it is true or `secs` pass.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A JWKS (and OIDC discovery) server whose document can be swapped, counting its hits.
pub struct JwksServer {
    pub handle: UpstreamHandle,
    pub jwks: Arc<std::sync::Mutex<String>>,
    pub hits: Arc<std::sync::atomic::AtomicUsize>,
}

impl JwksServer {
    pub fn start(jwks: &str, max_age: u64) -> JwksServer {
        JwksServer::start_on(TcpListener::bind("127.0.0.1:0").unwrap(), jwks, max_age)
    }

    pub fn start_on(listener: TcpListener, jwks: &str, max_age: u64) -> JwksServer {
        let doc = Arc::new(std::sync::Mutex::new(jwks.to_string()));
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let addr = listener.local_addr().unwrap();
        let (d, h) = (doc.clone(), hits.clone());
        let handler: Handler = Arc::new(move |req: &EchoRequest| {
            let issuer = format!("http://{addr}");
            let body = match req.target.as_str() {
                "/.well-known/openid-configuration" => {
                    json!({ "issuer": issuer, "jwks_uri": format!("{issuer}/keys") }).to_string()
                }
                _ => {
                    h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    d.lock().unwrap().clone()
                }
            };
            EchoResponse {
                status: 200,
                body: body.into_bytes(),
                headers: vec![("Cache-Control".into(), format!("public, max-age={max_age}"))],
                delay: None,
            }
        });
        let handle = spawn_upstream_on(listener, handler).unwrap();
        JwksServer {
            handle,
            jwks: doc,
            hits,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/keys", self.handle.addr)
    }

    pub fn set(&self, jwks: &str) {
        *self.jwks.lock().unwrap() = jwks.to_string();
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Merge the keys of several JWKS documents into one.
pub fn merge_jwks(docs: &[&str]) -> String {
    let keys: Vec<Value> = docs
        .iter()
        .flat_map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["keys"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    json!({ "keys": keys }).to_string()
}

/// Run `scopegate check` on a config text; returns (exit ok, stdout, stderr).
pub fn check(
    config_text: &str,
    files: &[(&str, &str)],
) -> (bool, String, String, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, config_text).unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_scopegate"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        path,
        dir,
    )
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

/// A new RSA key under `kid` (not cached: each call is a new key).
pub fn fresh_key(kid: &str) -> TestKey {
    let (pem, jwks) = scopegate::cli::mint::generate_rsa_key(kid);
    TestKey { pem, jwks }
}

/// The standard routes and an echo upstream behind a proxy trusting `issuers` (TOML), with an
/// admin port.
pub fn proxy_for_issuers(issuers: &str) -> (Proxy, u16) {
    let upstream = start_echo("a");
    let (port, admin) = (free_port(), free_port());
    let p = Proxy::start(
        &config_full(port, Some(admin), &[upstream], issuers, ""),
        port,
    );
    (p, admin)
}

/// The standard issuer with keys from `jwks_url`, refreshing fast (1 s cooldown and minimum).
pub fn url_proxy(jwks_url: &str) -> (Proxy, u16) {
    proxy_for_issuers(&format!(
        "[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_url = \"{jwks_url}\"\nunknown_kid_cooldown_seconds = 1\nrefresh_min_seconds = 1\n"
    ))
}

/// An issuer whose keys are found by OIDC discovery.
pub fn discovery_issuer(issuer: &str) -> String {
    format!("[[issuers]]\nissuer = \"{issuer}\"\naudiences = [\"{AUD}\"]\ndiscovery = true\n")
}

/// An address that refuses connections: port 1 (tcpmux) has no listener on a test machine,
/// unlike a port from `free_port`, which a parallel test may bind meanwhile.
pub fn dead_addr() -> SocketAddr {
    let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
    assert!(
        TcpStream::connect(addr).is_err(),
        "something listens on 127.0.0.1:1"
    );
    addr
}

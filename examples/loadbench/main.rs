//! The end-to-end load bench: what users run against what they would pick instead, measured
//! side by side in one run, interleaved round by round:
//!   scopegate with its shipped defaults (access log on), for one token, 10,000 tokens and a
//!   bad signature; the same with `access_log = "off"`; a bare Pingora `ProxyHttp` pass-through
//!   (examples/bare_pingora.rs: the framework ceiling); HAProxy pass-through; and HAProxy with
//!   `jwt_verify` RS256 + iss/aud/exp + a whole-word scope ACL (the auth-enforcing peer).
//! Every proxy is pinned to core 0; wrk (-t1 -c50) and the nginx upstream share core 1.
//!
//! Run it with `bench/load.sh` (installs wrk, haproxy and nginx if needed, builds in release).

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use scopegate::cli::mint;

mod features;
mod tls;

const ISS: &str = "https://issuer.bench/";
const AUD: &str = "https://api.bench";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listening on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// scopegate's config for the bench: everything left at its default but the addresses.
fn scopegate_config(listen: u16, admin: u16, upstream: u16, access_log: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
upgrade_socket = "/tmp/scopegate-bench-{listen}.sock"
{access_log}

[[issuers]]
issuer = "{ISS}"
audiences = ["{AUD}"]
jwks_file = "jwks.json"

[upstreams.api]
servers = ["127.0.0.1:{upstream}"]

[[routes]]
methods = ["GET"]
path = "/contacts"
scopes = ["read:contacts"]
"#
    )
}

/// Microseconds of CPU the process has used (user + system).
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 1_000_000 / 100
}

/// VmHWM (peak RSS) in kB.
fn peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

fn parse_latency(s: &str) -> f64 {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len()));
    let v: f64 = num.parse().unwrap_or(f64::NAN);
    match unit {
        "us" => v / 1000.0,
        "ms" => v,
        "s" => v * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(url: &str, script: Option<&Path>, header: Option<&str>, secs: u64, conns: u32) -> Run {
    let mut cmd = Command::new("taskset");
    cmd.args([
        "-c",
        "1",
        "wrk",
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{secs}s"),
        "--latency",
    ]);
    if let Some(s) = script {
        cmd.arg("-s").arg(s);
    }
    // Several headers, one a line.
    for h in header.into_iter().flat_map(str::lines) {
        cmd.args(["-H", h]);
    }
    cmd.arg(url);
    let out = cmd.output().expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut run = Run {
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
    };
    for line in text.lines() {
        let l = line.trim();
        if let Some(v) = l.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = l.strip_prefix("50%") {
            run.p50_ms = parse_latency(v);
        } else if let Some(v) = l.strip_prefix("99%") {
            run.p99_ms = parse_latency(v);
        } else if let Some(v) = l.strip_prefix("Non-2xx or 3xx responses:") {
            run.non_2xx = v.trim().parse().unwrap_or(0);
        }
    }
    if run.rps == 0.0 {
        eprintln!(
            "wrk said:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run
}

/// Proxy CPU per request in microseconds: CPU time over the run divided by requests served
/// (the fastest rows are load-generator bound on two cores, so rps alone understates a gap).
fn cpu_per_request(r: &Row) -> f64 {
    median(
        r.runs
            .iter()
            .zip(&r.cpu)
            .map(|(run, cpu)| cpu * 1e6 / run.rps.max(1.0))
            .collect(),
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One system under one load, over the rounds.
struct Row {
    name: String,
    runs: Vec<Run>,
    cpu: Vec<f64>,
    peak_kb: u64,
}

impl Row {
    fn new(name: impl Into<String>) -> Row {
        Row {
            name: name.into(),
            runs: Vec::new(),
            cpu: Vec::new(),
            peak_kb: 0,
        }
    }

    /// A measurement of the process `pid`: `load` run, and the CPU it took meanwhile.
    fn measure(&mut self, pid: u32, load: impl FnOnce() -> Run) {
        let cpu0 = cpu_us(pid);
        let started = Instant::now();
        let run = load();
        self.cpu
            .push((cpu_us(pid) - cpu0) as f64 / started.elapsed().as_micros() as f64);
        self.runs.push(run);
        self.peak_kb = peak_rss_kb(pid);
    }

    fn median_of(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }
}

/// The number in the environment variable `name`, or `default`.
fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The table every bench mode prints: medians, CPU and CPU per request beside rps. Rows that
/// were not run (`BENCH_ROWS`) are left out.
fn print_rows(title: &str, rows: &[Row]) {
    println!("\n{title}");
    let rows: Vec<&Row> = rows.iter().filter(|r| !r.runs.is_empty()).collect();
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    println!(
        "{:<width$} {:>9} {:>8} {:>8} {:>6} {:>10} {:>9} {:>8}",
        "system", "req/s", "p50 ms", "p99 ms", "CPU", "us CPU/req", "peak RSS", "non-2xx"
    );
    for r in rows {
        println!(
            "{:<width$} {:>9.0} {:>8.3} {:>8.3} {:>5.0}% {:>10.1} {:>6} MB {:>8}",
            r.name,
            r.median_of(|x| x.rps),
            r.median_of(|x| x.p50_ms),
            r.median_of(|x| x.p99_ms),
            median(r.cpu.clone()) * 100.0,
            cpu_per_request(r),
            r.peak_kb / 1024,
            r.runs.iter().map(|x| x.non_2xx).sum::<u64>()
        );
    }
}

/// A token from the bench's issuer for `sub`, valid for three hours.
fn bench_token(pem: &str, sub: String, scope: &str) -> String {
    let req = mint::TokenRequest {
        kid: Some("bench".into()),
        scope: scope.into(),
        iss: ISS.into(),
        aud: AUD.into(),
        sub,
        ttl: Duration::from_secs(3 * 3600),
        claims: Vec::new(),
        jkt: None,
        x5t: None,
    };
    mint::mint(pem.as_bytes(), &req, scopegate::snapshot::unix_now()).unwrap()
}

fn main() {
    let secs: u64 = env_or("BENCH_SECONDS", 8);
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    match std::env::var("BENCH_MODE").as_deref() {
        Ok("tls") => return tls::run(secs, rounds),
        Ok("features") => return features::run(secs, rounds),
        _ => {}
    }
    let conns: u32 = 50;
    let bin = std::env::var("SCOPEGATE_BIN").unwrap_or_else(|_| "target/release/scopegate".into());
    let bare =
        std::env::var("BARE_BIN").unwrap_or_else(|_| "target/release/examples/bare_pingora".into());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pem, jwks) = mint::generate_rsa_key("bench");
    std::fs::write(d.join("jwks.json"), jwks).unwrap();
    std::fs::write(d.join("key.pem"), &pem).unwrap();
    let public = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(d.join("key.pem"))
        .output()
        .expect("openssl");
    std::fs::write(d.join("pub.pem"), &public.stdout).unwrap();

    // The upstream: nginx answering a small JSON body, on core 1 with wrk.
    let up = free_port();
    std::fs::write(
        d.join("nginx.conf"),
        format!("daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:{up};\n    location / {{ default_type application/json; return 200 '{{\"ok\":true}}'; }}\n  }}\n}}\n", dir = d.display()),
    )
    .unwrap();
    let _nginx = Kill(
        Command::new("taskset")
            .args(["-c", "1", "nginx", "-c"])
            .arg(d.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx"),
    );
    wait_port(up);

    // scopegate, shipped defaults (access log on, written to a file as a log collector would).
    let (sg, sg_admin) = (free_port(), free_port());
    std::fs::write(
        d.join("defaults.toml"),
        scopegate_config(sg, sg_admin, up, ""),
    )
    .unwrap();
    let sg_log = std::fs::File::create(d.join("scopegate.log")).unwrap();
    let scopegate = Kill(
        Command::new("taskset")
            .args(["-c", "0", &bin, "run", "--config"])
            .arg(d.join("defaults.toml"))
            .stdout(Stdio::null())
            .stderr(sg_log)
            .spawn()
            .unwrap(),
    );
    // The same with the access log off (an A/B of its cost).
    let (off, off_admin) = (free_port(), free_port());
    std::fs::write(
        d.join("off.toml"),
        scopegate_config(off, off_admin, up, "access_log = \"off\""),
    )
    .unwrap();
    let scopegate_off = Kill(
        Command::new("taskset")
            .args(["-c", "0", &bin, "run", "--config"])
            .arg(d.join("off.toml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Bare Pingora, one worker like scopegate's default on one core.
    let bp = free_port();
    let bare_pingora = Kill(
        Command::new("taskset")
            .args([
                "-c",
                "0",
                &bare,
                &format!("127.0.0.1:{bp}"),
                &format!("127.0.0.1:{up}"),
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("bare_pingora"),
    );
    // HAProxy: pass-through, and verifying the token as scopegate does.
    let (hp, hj) = (free_port(), free_port());
    std::fs::write(
        d.join("haproxy.cfg"),
        format!(
            r#"global
  nbthread 1
  maxconn 4000
defaults
  mode http
  option http-keep-alive
  timeout connect 2s
  timeout client 30s
  timeout server 30s
frontend pass
  bind 127.0.0.1:{hp}
  default_backend b
frontend jwt
  bind 127.0.0.1:{hj}
  http-request set-var(txn.bearer) http_auth_bearer
  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')
  http-request set-var(txn.iss) var(txn.bearer),jwt_payload_query('$.iss')
  http-request set-var(txn.aud) var(txn.bearer),jwt_payload_query('$.aud')
  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')
  http-request set-var(txn.scope) var(txn.bearer),jwt_payload_query('$.scope')
  http-request set-var(txn.now) date()
  http-request deny deny_status 401 unless {{ var(txn.alg) -m str RS256 }}
  http-request deny deny_status 401 unless {{ var(txn.bearer),jwt_verify(txn.alg,"{pubkey}") -m int 1 }}
  http-request deny deny_status 401 unless {{ var(txn.iss) -m str {ISS} }}
  http-request deny deny_status 401 unless {{ var(txn.aud) -m str {AUD} }}
  http-request deny deny_status 401 if {{ var(txn.exp),sub(txn.now) -m int lt 0 }}
  http-request deny deny_status 403 unless {{ var(txn.scope) -m reg (^|\ )read:contacts(\ |$) }}
  default_backend b
backend b
  http-reuse always
  server s1 127.0.0.1:{up}
"#,
            pubkey = d.join("pub.pem").display()
        ),
    )
    .unwrap();
    let haproxy = Kill(
        Command::new("taskset")
            .args(["-c", "0", "haproxy", "-db", "-f"])
            .arg(d.join("haproxy.cfg"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("haproxy"),
    );
    for p in [sg, sg_admin, off, bp, hp, hj] {
        wait_port(p);
    }

    let sign = |sub: String| bench_token(&pem, sub, "read:contacts write:contacts");
    let one = sign("bench-user".into());
    let pool: Vec<String> = (0..10_000).map(|i| sign(format!("user-{i}"))).collect();
    let mut bad = one.clone().into_bytes();
    let n = bad.len();
    bad[n - 10] = if bad[n - 10] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    std::fs::write(d.join("tokens.txt"), pool.join("\n") + "\n").unwrap();
    let script = d.join("pool.lua");
    let mut f = std::fs::File::create(&script).unwrap();
    write!(
        f,
        "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\nlocal i = 0\nrequest = function()\n  i = i % #tokens + 1\n  return wrk.format(\"GET\", \"/contacts\", {{ [\"Authorization\"] = \"Bearer \" .. tokens[i] }})\nend\n",
        d.join("tokens.txt").display()
    )
    .unwrap();
    drop(f);
    let one_h = format!("Authorization: Bearer {one}");
    let bad_h = format!("Authorization: Bearer {bad}");
    let url = |port: u16| format!("http://127.0.0.1:{port}/contacts");

    // (name, port, pid, token kind) in the order they run each round.
    enum Load {
        One,
        Pool,
        Bad,
    }
    let plan: Vec<(&'static str, u16, u32, Load)> = vec![
        (
            "scopegate defaults, one token",
            sg,
            scopegate.0.id(),
            Load::One,
        ),
        (
            "scopegate defaults, 10,000 tokens",
            sg,
            scopegate.0.id(),
            Load::Pool,
        ),
        (
            "scopegate defaults, bad signature",
            sg,
            scopegate.0.id(),
            Load::Bad,
        ),
        (
            "scopegate access_log=off, one token",
            off,
            scopegate_off.0.id(),
            Load::One,
        ),
        (
            "bare Pingora pass-through",
            bp,
            bare_pingora.0.id(),
            Load::One,
        ),
        ("HAProxy pass-through", hp, haproxy.0.id(), Load::One),
        (
            "HAProxy jwt_verify, one token",
            hj,
            haproxy.0.id(),
            Load::One,
        ),
        (
            "HAProxy jwt_verify, 10,000 tokens",
            hj,
            haproxy.0.id(),
            Load::Pool,
        ),
        (
            "HAProxy jwt_verify, bad signature",
            hj,
            haproxy.0.id(),
            Load::Bad,
        ),
    ];
    let mut rows: Vec<Row> = plan.iter().map(|(name, ..)| Row::new(*name)).collect();
    // Warm up: connections, upstream pools, and every token of the pool in scopegate's cache.
    for port in [sg, off, bp, hp, hj] {
        wrk(&url(port), None, Some(&one_h), 2, conns);
    }
    wrk(&url(sg), Some(&script), None, 3, conns);
    for round in 0..rounds {
        eprintln!("round {}/{rounds} ...", round + 1);
        for (i, (_, port, pid, load)) in plan.iter().enumerate() {
            rows[i].measure(*pid, || match load {
                Load::One => wrk(&url(*port), None, Some(&one_h), secs, conns),
                Load::Pool => wrk(&url(*port), Some(&script), None, secs, conns),
                Load::Bad => wrk(&url(*port), None, Some(&bad_h), secs, conns),
            });
        }
    }
    let log_lines = std::fs::read_to_string(d.join("scopegate.log"))
        .map(|l| l.lines().count())
        .unwrap_or(0);
    print_rows(
        &format!("load bench: {rounds} interleaved rounds of {secs}s each, wrk -t1 -c{conns} keep-alive, nginx upstream; every proxy on core 0, wrk + nginx on core 1; medians"),
        &rows,
    );
    let rps = |i: usize| rows[i].median_of(|x| x.rps);
    let cpu_req = |i: usize| cpu_per_request(&rows[i]);
    let p99 = |i: usize| rows[i].median_of(|x| x.p99_ms);
    println!("\nratios (targets in brackets):");
    let ratios = [
        (
            "defaults one token / access_log off",
            rps(0) / rps(3),
            "[>= 0.95]",
        ),
        (
            "defaults one token / bare Pingora",
            rps(0) / rps(4),
            "[>= 0.95]",
        ),
        (
            "defaults 10,000 tokens / bare Pingora",
            rps(1) / rps(4),
            "[>= 0.90]",
        ),
        ("bad signature / HAProxy's", rps(2) / rps(8), "[>= 1.5]"),
        (
            "p99 defaults one token / HAProxy jwt's",
            p99(0) / p99(6),
            "[<= 1]",
        ),
        (
            "defaults one token / HAProxy pass-through",
            rps(0) / rps(5),
            "[>= 0.9]",
        ),
        (
            "CPU/req defaults one token / HAProxy pass",
            cpu_req(0) / cpu_req(5),
            "[<= 1.15]",
        ),
        (
            "defaults one token / HAProxy jwt_verify",
            rps(0) / rps(6),
            "[>= 2.5]",
        ),
        (
            "defaults 10,000 / HAProxy jwt_verify",
            rps(1) / rps(7),
            "[>= 2.5]",
        ),
        ("bare Pingora / HAProxy pass-through", rps(4) / rps(5), ""),
    ];
    for (what, ratio, target) in ratios {
        println!("  {what:<42} {ratio:.3} {target}");
    }
    println!("access-log lines written by scopegate: {log_lines}");
}

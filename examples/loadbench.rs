//! The end-to-end load bench: a fast upstream, scopegate, and wrk, all on 127.0.0.1, measured
//! in one run, interleaved:
//!   (a) every route public (the zero-auth limit of our own stack)
//!   (b) one valid RS256 token reused by every request
//!   (c) a pool of 10,000 distinct valid tokens (cache warmed first)
//!   (d) a token with an invalid signature
//! The proxy is pinned to core 0 with one worker thread; wrk and the upstream to core 1.
//!
//! Run it with `bench/load.sh` (installs wrk if needed, builds in release mode).

use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../tests/common/echo.rs"]
mod echo;
use echo::{EchoRequest, EchoResponse, Handler};
use scopegate::cli::mint;

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

fn config(listen: u16, admin: u16, upstream: u16, public: bool, threads: usize) -> String {
    let rule = if public {
        "public = true".to_string()
    } else {
        "scopes = [\"read:contacts\"]".to_string()
    };
    format!(
        r#"[server]
listen = "127.0.0.1:{listen}"
admin_listen = "127.0.0.1:{admin}"
threads = {threads}

[[issuers]]
issuer = "{ISS}"
audiences = ["{AUD}"]
jwks_file = "jwks.json"

[upstreams.api]
servers = ["127.0.0.1:{upstream}"]

[[routes]]
methods = ["GET"]
path = "/contacts"
{rule}

[[routes]]
methods = ["GET"]
path = "/contacts/{{id}}"
{rule}
"#
    )
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
    if let Some(h) = header {
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

fn admin_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn upstream_main(port: u16) {
    // Answers every request with a small 200; the cheapest upstream we can write.
    let handler: Handler = Arc::new(|_req: &EchoRequest| EchoResponse {
        status: 200,
        body: b"{\"ok\":true}".to_vec(),
        headers: Vec::new(),
        delay: None,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        echo::serve(listener, handler).await;
    });
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("upstream") {
        upstream_main(args[2].parse().unwrap());
        return;
    }
    let secs: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let conns: u32 = 50;
    let bin = std::env::var("SCOPEGATE_BIN").unwrap_or_else(|_| "target/release/scopegate".into());
    let log = std::env::var("BENCH_RUST_LOG").unwrap_or_else(|_| "warn".into());

    let dir = tempfile::tempdir().unwrap();
    let (pem, jwks) = mint::generate_rsa_key("bench");
    std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();

    let up_port = free_port();
    let exe = std::env::current_exe().unwrap();
    let _upstream = Kill(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(&exe)
            .args(["upstream", &up_port.to_string()])
            .spawn()
            .unwrap(),
    );
    wait_port(up_port);

    // One proxy process for every scenario: (a) and (b)-(d) differ only in the config, which is
    // swapped by hot reload between runs, so nothing but enforcement differs between them.
    let (port, admin) = (free_port(), free_port());
    let public_cfg = config(port, admin, up_port, true, 1);
    let auth_cfg = config(port, admin, up_port, false, 1);
    let cfg_path = dir.path().join("scopegate.toml");
    std::fs::write(&cfg_path, &public_cfg).unwrap();
    let proxy = Kill(
        Command::new("taskset")
            .args(["-c", "0", &bin, "run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", &log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(port);
    wait_port(admin);
    let pid = proxy.0.id();
    let mut generation = 1;
    let mut switch = |text: &str| {
        let tmp = dir.path().join("next.toml");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &cfg_path).unwrap();
        generation += 1;
        let want = format!("scopegate_config_generation {generation}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !admin_get(admin, "/metrics").contains(&want) {
            assert!(
                Instant::now() < deadline,
                "reload to generation {generation} not seen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };

    let now = scopegate::snapshot::unix_now();
    let sign = |sub: String| {
        let req = mint::TokenRequest {
            kid: Some("bench".into()),
            scope: "read:contacts write:contacts".into(),
            iss: ISS.into(),
            aud: AUD.into(),
            sub,
            ttl: Duration::from_secs(3 * 3600),
            claims: Vec::new(),
        };
        mint::mint(pem.as_bytes(), &req, now).unwrap()
    };
    let one = sign("bench-user".into());
    let pool: Vec<String> = (0..10_000).map(|i| sign(format!("user-{i}"))).collect();
    let mut bad = one.clone().into_bytes();
    let n = bad.len();
    bad[n - 10] = if bad[n - 10] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();

    let tokens_path = dir.path().join("tokens.txt");
    std::fs::write(&tokens_path, pool.join("\n") + "\n").unwrap();
    let script = dir.path().join("pool.lua");
    let mut f = std::fs::File::create(&script).unwrap();
    write!(
        f,
        r#"local tokens = {{}}
for line in io.lines("{}") do tokens[#tokens + 1] = line end
local i = 0
request = function()
  i = i % #tokens + 1
  return wrk.format("GET", "/contacts", {{ ["Authorization"] = "Bearer " .. tokens[i] }})
end
"#,
        tokens_path.display()
    )
    .unwrap();
    drop(f);

    let url = format!("http://127.0.0.1:{port}/contacts");
    let one_h = format!("Authorization: Bearer {one}");
    let bad_h = format!("Authorization: Bearer {bad}");

    // For reference in the same run: HAProxy forwarding the same requests without any check,
    // on the same core with one thread (when haproxy is installed).
    let haproxy_port = free_port();
    let haproxy_cfg = dir.path().join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 4000\ndefaults\n  mode http\n  option http-keep-alive\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\nfrontend f\n  bind 127.0.0.1:{haproxy_port}\n  default_backend b\nbackend b\n  http-reuse always\n  server s1 127.0.0.1:{up_port}\n"
        ),
    )
    .unwrap();
    let haproxy = Command::new("taskset")
        .args(["-c", "0", "haproxy", "-db", "-f"])
        .arg(&haproxy_cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()
        .map(Kill);
    let haproxy_url = format!("http://127.0.0.1:{haproxy_port}/contacts");
    let haproxy_up = haproxy.is_some() && {
        std::thread::sleep(Duration::from_millis(300));
        std::net::TcpStream::connect(("127.0.0.1", haproxy_port)).is_ok()
    };

    // Warm up connections and the upstream pool.
    wrk(&url, None, Some(&one_h), 2, conns);

    // (a) sends the very requests of (b), token included, to the all-public proxy: the ratio
    // then measures enforcement alone. (a0) is the same without any Authorization header.
    let names = [
        "(a) all routes public",
        "(b) one valid RS256 token",
        "(c) 10,000 distinct tokens",
        "(d) invalid signature",
        "(a0) public, no token header",
        "(h) HAProxy pass-through",
    ];
    let mut results: Vec<Vec<Run>> = (0..names.len()).map(|_| Vec::new()).collect();
    for round in 0..rounds {
        eprintln!("round {}/{rounds} ...", round + 1);
        results[0].push(wrk(&url, None, Some(&one_h), secs, conns));
        results[4].push(wrk(&url, None, None, secs, conns));
        if haproxy_up {
            results[5].push(wrk(&haproxy_url, None, Some(&one_h), secs, conns));
        }
        switch(&auth_cfg);
        // A reload starts an empty cache: warm every token of the pool first.
        wrk(&url, Some(&script), None, 2, conns);
        results[1].push(wrk(&url, None, Some(&one_h), secs, conns));
        results[2].push(wrk(&url, Some(&script), None, secs, conns));
        results[3].push(wrk(&url, None, Some(&bad_h), secs, conns));
        switch(&public_cfg);
    }
    let rss = |pid: u32| -> String {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l[6..].trim().to_string())
            })
            .unwrap_or_default()
    };

    println!(
        "\nscopegate load bench: {rounds} interleaved rounds of {secs}s, {conns} keep-alive connections, wrk -t1; one proxy process (config swapped by hot reload), 1 worker pinned to core 0; wrk + upstream on core 1; RUST_LOG={log}"
    );
    println!(
        "{:<30} {:>10} {:>9} {:>9} {:>8} {:>10}",
        "scenario", "req/s", "p50 ms", "p99 ms", "vs (a)", "non-2xx"
    );
    let base = median(results[0].iter().map(|r| r.rps).collect());
    for (i, name) in names.iter().enumerate() {
        if results[i].is_empty() {
            println!("{name:<30} (not run: haproxy is not installed or did not start)");
            continue;
        }
        let rps = median(results[i].iter().map(|r| r.rps).collect());
        let p50 = median(results[i].iter().map(|r| r.p50_ms).collect());
        let p99 = median(results[i].iter().map(|r| r.p99_ms).collect());
        let non2xx: u64 = results[i].iter().map(|r| r.non_2xx).sum();
        println!(
            "{name:<30} {rps:>10.0} {p50:>9.3} {p99:>9.3} {:>8.3} {non2xx:>10}",
            rps / base
        );
    }
    println!("RSS of the proxy after the run: {}", rss(pid));
}

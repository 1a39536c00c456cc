//! `BENCH_MODE=tls`: the traffic an edge carries. HTTPS/1.1 keep-alive (wrk), HTTP/2 over TLS
//! (h2load -c10 -m10), full handshakes (wrk with `Connection: close`) and resumed ones
//! (`openssl s_time -reuse`, one connection at a time, so client-bound: compare CPU per
//! handshake), one RS256 token, an ECDSA P-256 certificate, TLS 1.3, for scopegate (shipped
//! defaults + `[server.tls]`), bare Pingora (rustls), the same on Pingora's sessions without its
//! proxy loop (`bare_pingora --no-proxy-loop`), Pingora's sessions answering every request
//! themselves with no upstream (`--answer-here`: Pingora's server side alone), nginx and HAProxy
//! pass-through, and HAProxy `jwt_verify`; every proxy on core 0, the load generator and the nginx upstream on core 1; CPU
//! per request beside rps.

use std::process::{Command, Stdio};

use scopegate::cli::mint;

use super::{
    bench_token, cpu_per_request, free_port, print_rows, scopegate_config, wait_port, wrk, Kill,
    Row, Run, AUD, ISS,
};

/// h2load over TLS: `-c10 -m10` for `secs` seconds.
fn h2load(url: &str, header: &str, secs: u64) -> Run {
    let out = Command::new("taskset")
        .args(["-c", "1", "h2load", "-c10", "-m10", "-t1"])
        .args(["-D", &secs.to_string(), "-H", header, url])
        .output()
        .expect("h2load (apt-get install nghttp2-client)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut run = Run {
        rps: 0.0,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
    };
    for line in text.lines() {
        let l = line.trim();
        // "finished in 6.00s, 41234.50 req/s, 1.23MB/s"
        if let Some(rest) = l.strip_prefix("finished in") {
            if let Some(rps) = rest.split(',').nth(1) {
                run.rps = rps
                    .trim()
                    .trim_end_matches("req/s")
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
            }
        // "status codes: 1000 2xx, 0 3xx, 0 4xx, 0 5xx"
        } else if let Some(rest) = l.strip_prefix("status codes:") {
            run.non_2xx = rest
                .split(',')
                .skip(1)
                .filter_map(|p| p.split_whitespace().next()?.parse::<u64>().ok())
                .sum();
        // "time for request:   1.02ms  40.11ms  2.31ms  1.01ms  88.12%" (min max mean sd)
        } else if let Some(rest) = l.strip_prefix("time for request:") {
            run.p50_ms = rest
                .split_whitespace()
                .nth(2)
                .map(super::parse_latency)
                .unwrap_or(f64::NAN);
        }
    }
    if run.rps == 0.0 {
        eprintln!(
            "h2load said:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    run
}

/// `openssl s_time -reuse`: one connection at a time, each resuming the first one's TLS 1.3
/// session (a ticket), sending `GET /contacts` without a token and reading the answer (whose
/// status s_time does not count: `non_2xx` stays 0).
fn s_time_resumed(port: u16, secs: u64) -> Run {
    let out = Command::new("taskset")
        .args([
            "-c",
            "1",
            "openssl",
            "s_time",
            "-reuse",
            "-www",
            "/contacts",
        ])
        .args([
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-time",
            &secs.to_string(),
        ])
        .output()
        .expect("openssl s_time");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    // "4888 connections in 4 real seconds, 277 bytes read per connection"
    let rps = text
        .lines()
        .filter(|l| l.contains("real seconds"))
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let n: f64 = w.next()?.parse().ok()?;
            let s: f64 = w.nth(2)?.parse().ok()?;
            Some(n / s.max(1.0))
        })
        .next_back()
        .unwrap_or(0.0);
    if rps == 0.0 {
        eprintln!(
            "s_time said:\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Run {
        rps,
        p50_ms: f64::NAN,
        p99_ms: f64::NAN,
        non_2xx: 0,
    }
}

#[derive(Clone, Copy)]
enum Load {
    KeepAlive,
    H2,
    Handshakes,
    Resumed,
}

pub fn run(secs: u64, rounds: usize) {
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
    // ECDSA P-256, as the issue's figures.
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(d.join("tls.key"))
        .arg("-out")
        .arg(d.join("tls.crt"))
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(made.success());
    let both = [
        std::fs::read(d.join("tls.crt")).unwrap(),
        std::fs::read(d.join("tls.key")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("tls.pem"), both).unwrap();

    // The upstream, plain HTTP on core 1.
    let up = free_port();
    // nginx as a TLS pass-through proxy on core 0 (its own process).
    let ng = free_port();
    let nginx_conf = |upstream_only: bool| {
        let proxy = if upstream_only {
            String::new()
        } else {
            format!(
                "  upstream u {{ server 127.0.0.1:{up}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{ng} ssl http2;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n    location / {{ proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n",
                c = d.join("tls.crt").display(),
                k = d.join("tls.key").display()
            )
        };
        let origin = if upstream_only {
            format!("  server {{\n    listen 127.0.0.1:{up};\n    location / {{ default_type application/json; return 200 '{{\"ok\":true}}'; }}\n  }}\n")
        } else {
            String::new()
        };
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx-{u}.pid;\nerror_log {dir}/nginx-{u}.err;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{origin}{proxy}}}\n",
            dir = d.display(),
            u = upstream_only
        )
    };
    std::fs::write(d.join("origin.conf"), nginx_conf(true)).unwrap();
    std::fs::write(d.join("proxy.conf"), nginx_conf(false)).unwrap();
    let spawn = |core: &str, args: &[&str]| {
        Kill(
            Command::new("taskset")
                .args(["-c", core])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect(args[0]),
        )
    };
    let origin_conf = d.join("origin.conf").display().to_string();
    let proxy_conf = d.join("proxy.conf").display().to_string();
    let _origin = spawn("1", &["nginx", "-c", &origin_conf]);
    wait_port(up);
    let nginx = spawn("0", &["nginx", "-c", &proxy_conf]);

    let (sg, sg_admin) = (free_port(), free_port());
    let tls = format!(
        "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
        d.join("tls.crt").display(),
        d.join("tls.key").display()
    );
    let text = scopegate_config(sg, sg_admin, up, "").replacen(
        "\n[[issuers]]",
        &format!("\n{tls}\n[[issuers]]"),
        1,
    );
    std::fs::write(d.join("defaults.toml"), text).unwrap();
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
    let bp = free_port();
    let (crt, key) = (
        d.join("tls.crt").display().to_string(),
        d.join("tls.key").display().to_string(),
    );
    // Bare Pingora; (`--no-proxy-loop`) the same pass-through on Pingora's sessions without its
    // proxy loop: what a lean loop could save; (`--answer-here`) those sessions answering
    // themselves: what Pingora's server side costs without the upstream exchange.
    let bare_on = |port: u16, mode: &[&str]| {
        let (listen, upstream) = (format!("127.0.0.1:{port}"), format!("127.0.0.1:{up}"));
        let mut args: Vec<&str> = vec![&bare];
        args.extend_from_slice(mode);
        args.extend_from_slice(&[&listen, &upstream, "1", &crt, &key]);
        spawn("0", &args)
    };
    let bare_pingora = bare_on(bp, &[]);
    let lp = free_port();
    let lean_pingora = bare_on(lp, &["--no-proxy-loop"]);
    let ap = free_port();
    let pingora_answering = bare_on(ap, &["--answer-here"]);
    let (hp, hj) = (free_port(), free_port());
    let tls_pem = d.join("tls.pem").display().to_string();
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
  bind 127.0.0.1:{hp} ssl crt {tls_pem} alpn h2,http/1.1
  default_backend b
frontend jwt
  bind 127.0.0.1:{hj} ssl crt {tls_pem} alpn h2,http/1.1
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
    let haproxy_cfg = d.join("haproxy.cfg").display().to_string();
    let haproxy = spawn("0", &["haproxy", "-db", "-f", &haproxy_cfg]);
    for p in [sg, sg_admin, bp, lp, ap, hp, hj, ng] {
        wait_port(p);
    }

    let token = bench_token(&pem, "bench-user".into(), "read:contacts write:contacts");
    let auth = format!("Authorization: Bearer {token}");
    let url = |port: u16| format!("https://127.0.0.1:{port}/contacts");

    let systems: [(&str, u16, u32); 7] = [
        ("scopegate defaults", sg, scopegate.0.id()),
        ("bare Pingora pass-through", bp, bare_pingora.0.id()),
        ("nginx pass-through", ng, nginx.0.id()),
        ("HAProxy pass-through", hp, haproxy.0.id()),
        ("HAProxy jwt_verify", hj, haproxy.0.id()),
        ("Pingora sessions, no proxy loop", lp, lean_pingora.0.id()),
        (
            "Pingora sessions answering, no upstream",
            ap,
            pingora_answering.0.id(),
        ),
    ];
    let loads = [
        (Load::KeepAlive, "HTTPS/1.1 keep-alive"),
        (Load::H2, "HTTP/2 -c10 -m10"),
        (Load::Handshakes, "full handshakes"),
        (Load::Resumed, "resumed handshakes"),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (_, lname) in &loads {
        for (sname, ..) in &systems {
            rows.push(Row::new(format!("{sname}, {lname}")));
        }
    }
    for (_, port, _) in &systems {
        wrk(&url(*port), None, Some(&auth), 2, 50);
    }
    let close = format!("{auth}\nConnection: close");
    for round in 0..rounds {
        eprintln!("round {}/{rounds} ...", round + 1);
        for (li, (load, _)) in loads.iter().enumerate() {
            for (si, (_, port, pid)) in systems.iter().enumerate() {
                rows[li * systems.len() + si].measure(*pid, || match load {
                    Load::KeepAlive => wrk(&url(*port), None, Some(&auth), secs, 50),
                    Load::H2 => h2load(&url(*port), &auth, secs),
                    Load::Handshakes => wrk(&url(*port), None, Some(&close), secs, 50),
                    Load::Resumed => s_time_resumed(*port, secs),
                });
            }
        }
    }
    print_rows(
        &format!("TLS bench: {rounds} interleaved rounds of {secs}s, TLS 1.3, ECDSA P-256, one RS256 token; every proxy on core 0, the load generator + nginx upstream on core 1; medians (h2load reports a mean latency: in the p50 column)"),
        &rows,
    );
    let per_req = cpu_per_request;
    let n = systems.len();
    let rps = |i: usize| rows[i].median_of(|x| x.rps);
    println!("\nratios (issue 19's targets in brackets):");
    for (li, (_, lname)) in loads.iter().enumerate() {
        let (s, hpass, hjwt) = (li * n, li * n + 3, li * n + 4);
        println!(
            "  {lname:<22} CPU/req scopegate / HAProxy pass {:.2}   rps scopegate / HAProxy jwt_verify {:.2}   rps scopegate / HAProxy pass {:.2}",
            per_req(&rows[s]) / per_req(&rows[hpass]),
            rps(s) / rps(hjwt),
            rps(s) / rps(hpass)
        );
    }
    println!("  targets: CPU/req <= 1.2 (HTTPS/1.1), <= 1.5 (HTTP/2); rps >= 2 x jwt_verify; handshakes/s >= HAProxy's");
}

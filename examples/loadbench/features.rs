//! `BENCH_MODE=features`: what the v3 features cost on the request path, against the shipped
//! defaults in the same run. A route under one `sub` quota that is never exceeded, counted
//! in-process and shared on Redis (redis-server on core 1), for one caller and for 10,000
//! callers; tracing to an OTLP/HTTP sink (nginx answering 200 on core 1) at `sample_ratio`
//! 0.01 and 1.0; refusals (a forged signature), which the console's ring records; DPoP-bound
//! tokens, each request with a fresh ES256 proof (made ahead, one per request, so none is a
//! replay). Every scopegate on core 0, wrk + nginx (+ redis) on core 1; CPU per request beside
//! rps.

use std::io::Write;
use std::process::{Command, Stdio};

use scopegate::cli::mint;

use super::{
    bench_token, cpu_per_request, env_or, free_port, print_rows, scopegate_config, wait_port, wrk,
    Kill, Row,
};

pub fn run(secs: u64, rounds: usize) {
    let bin = std::env::var("SCOPEGATE_BIN").unwrap_or_else(|_| "target/release/scopegate".into());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (pem, jwks) = mint::generate_rsa_key("bench");
    std::fs::write(d.join("jwks.json"), jwks).unwrap();

    // nginx: the upstream, and an OTLP sink that takes every export.
    let (up, otlp) = (free_port(), free_port());
    std::fs::write(
        d.join("nginx.conf"),
        format!("daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx.err;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  client_body_buffer_size 1m;\n  server {{\n    listen 127.0.0.1:{up};\n    location / {{ default_type application/json; return 200 '{{\"ok\":true}}'; }}\n  }}\n  server {{\n    listen 127.0.0.1:{otlp};\n    location / {{ return 200; }}\n  }}\n}}\n", dir = d.display()),
    )
    .unwrap();
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
    let nginx_conf = d.join("nginx.conf").display().to_string();
    let _nginx = spawn("1", &["nginx", "-c", &nginx_conf]);
    let redis_port = free_port();
    let _redis = spawn(
        "1",
        &[
            "redis-server",
            "--port",
            &redis_port.to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
    );
    wait_port(up);
    wait_port(otlp);
    wait_port(redis_port);

    let quota = "[quotas.per_user]\nkey = \"sub\"\nlimit = 1000000000\nwindow_seconds = 60\n";
    let variants: [(&str, String); 9] = [
        ("defaults", String::new()),
        ("quota in-process", quota.to_string()),
        (
            "quota on Redis",
            format!("{quota}\n[shared_state]\nurl = \"redis://127.0.0.1:{redis_port}/0\"\n"),
        ),
        (
            "tracing 0.01",
            format!(
                "[tracing]\notlp_endpoint = \"http://127.0.0.1:{otlp}\"\nsample_ratio = 0.01\n"
            ),
        ),
        (
            "tracing 1.0",
            format!("[tracing]\notlp_endpoint = \"http://127.0.0.1:{otlp}\"\nsample_ratio = 1.0\n"),
        ),
        (
            "dpop required",
            "[proof_of_possession]\nmechanism = \"dpop\"\ndpop_max_age_seconds = 3600\n".into(),
        ),
        // The defaults again in a process of their own: how far two identical processes differ
        // (memory layout, the host) is the floor under every other row's difference.
        ("defaults, a second process", String::new()),
        // A limit a real API would set (10 a second a user): its credit is 1 a sub-bucket, so
        // every caller takes leases from the store. In a database of its own: the same quota
        // name and window as the other would share its counts.
        (
            "quota on Redis, 600 a minute",
            format!(
                "[quotas.per_user]\nkey = \"sub\"\nlimit = 600\nwindow_seconds = 60\n\n\
                 [shared_state]\nurl = \"redis://127.0.0.1:{redis_port}/1\"\n"
            ),
        ),
        // The in-process quota in a second process too: its target is compared between two
        // processes of each, so one process's luck (its memory layout) does not decide it.
        ("quota in-process, a second process", quota.to_string()),
    ];
    let mut procs = Vec::new();
    let mut admins = Vec::new();
    for (i, (_, extra)) in variants.iter().enumerate() {
        let (port, admin) = (free_port(), free_port());
        let text = scopegate_config(port, admin, up, "");
        // Top-level sections go after the routes, so they are not read as part of one.
        let path = d.join(format!("v{i}.toml"));
        std::fs::write(&path, format!("{text}\n{extra}")).unwrap();
        let log = std::fs::File::create(d.join(format!("v{i}.log"))).unwrap();
        let child = Kill(
            Command::new("taskset")
                .args(["-c", "0", &bin, "run", "--config"])
                .arg(&path)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
        wait_port(port);
        procs.push((port, child));
        admins.push(admin);
    }

    let sign = |sub: String| bench_token(&pem, sub, "read:contacts");
    let one = sign("bench-user".into());
    let pool: Vec<String> = (0..10_000).map(|i| sign(format!("user-{i}"))).collect();
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
    let mut bad = one.clone().into_bytes();
    let n = bad.len();
    bad[n - 10] = if bad[n - 10] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    let one_h = format!("Authorization: Bearer {one}");
    let bad_h = format!("Authorization: Bearer {bad}");
    let url = |port: u16| format!("http://127.0.0.1:{port}/contacts");

    // DPoP: one token bound to a P-256 key, and a fresh proof for each request of a round.
    let (dpop_pem, _) = mint::generate_ec_key("dpop");
    let jkt = scopegate::cli::dpop::key_thumbprint(dpop_pem.as_bytes()).unwrap();
    let bound = mint::mint(
        pem.as_bytes(),
        &mint::TokenRequest {
            kid: Some("bench".into()),
            scope: "read:contacts".into(),
            iss: super::ISS.into(),
            aud: super::AUD.into(),
            sub: "bench-user".into(),
            ttl: std::time::Duration::from_secs(3 * 3600),
            claims: Vec::new(),
            jkt: Some(jkt),
            x5t: None,
        },
        scopegate::snapshot::unix_now(),
    )
    .unwrap();
    let dpop_port = procs[5].0;
    let proofs = d.join("proofs.txt");
    let dpop_script = d.join("dpop.lua");
    std::fs::write(
        &dpop_script,
        format!(
            "local proofs = {{}}\nfor line in io.lines(\"{}\") do proofs[#proofs + 1] = line end\nlocal i = 0\nrequest = function()\n  i = i % #proofs + 1\n  return wrk.format(\"GET\", \"/contacts\", {{ [\"Authorization\"] = \"DPoP {bound}\", [\"DPoP\"] = proofs[i] }})\nend\n",
            proofs.display()
        ),
    )
    .unwrap();
    // More proofs than a round's requests at 40,000 requests/s; made before each DPoP run.
    let make_proofs = |count: usize| {
        let req = scopegate::cli::dpop::ProofRequest {
            method: "GET".into(),
            url: Some(format!("http://127.0.0.1:{dpop_port}/contacts")),
            token: Some(bound.clone()),
            nonce: None,
            thumbprint: false,
        };
        let now = scopegate::snapshot::unix_now();
        let lines: Vec<String> = (0..count)
            .map(|_| scopegate::cli::dpop::dpop_proof(dpop_pem.as_bytes(), &req, now).unwrap())
            .collect();
        std::fs::write(&proofs, lines.join("\n") + "\n").unwrap();
    };
    let per_round = (40_000 * secs.max(1)) as usize;

    enum Load {
        One,
        Pool,
        Bad,
        Dpop,
    }
    // (name, variant, load)
    let plan: [(&str, usize, Load); 13] = [
        ("defaults, one token", 0, Load::One),
        ("tracing sample_ratio 0.01", 3, Load::One),
        ("tracing sample_ratio 1.0", 4, Load::One),
        ("quota in-process, one caller", 1, Load::One),
        ("quota on Redis, one caller", 2, Load::One),
        ("defaults, 10,000 tokens", 0, Load::Pool),
        (
            "defaults again (second process), 10,000 tokens",
            6,
            Load::Pool,
        ),
        ("quota in-process, 10,000 callers", 1, Load::Pool),
        (
            "quota in-process again (second process), 10,000 callers",
            8,
            Load::Pool,
        ),
        ("quota on Redis, 10,000 callers", 2, Load::Pool),
        (
            "quota on Redis, 600 a minute, 10,000 callers",
            7,
            Load::Pool,
        ),
        ("defaults, bad signature (refusals)", 0, Load::Bad),
        ("DPoP required, ES256 proof each request", 5, Load::Dpop),
    ];
    let mut rows: Vec<Row> = plan.iter().map(|(name, ..)| Row::new(*name)).collect();
    // BENCH_ROWS: only the rows whose names contain one of these pieces, separated by `|` (row
    // names hold commas: "10,000").
    let only: Option<Vec<String>> = std::env::var("BENCH_ROWS")
        .ok()
        .map(|v| v.split('|').map(|p| p.trim().to_string()).collect());
    let wanted = |name: &str| {
        only.as_ref()
            .is_none_or(|pieces| pieces.iter().any(|p| name.contains(p.as_str())))
    };
    // Per row on Redis: the store's script calls, and the requests served meanwhile.
    let mut store_calls = vec![(0u64, 0f64); plan.len()];
    for (port, _) in procs[..5].iter().chain(&procs[6..]) {
        wrk(&url(*port), None, Some(&one_h), 2, 50);
        wrk(&url(*port), Some(&script), None, 2, 50);
    }
    make_proofs(per_round / 2);
    wrk(&url(dpop_port), Some(&dpop_script), None, 2, 50);
    // BENCH_CONNECTIONS: wrk's connections (50). More keep the proxy's core busy on rows whose
    // requests wait (on the store), so their rps shows throughput at saturation.
    let conns: u32 = env_or("BENCH_CONNECTIONS", 50);
    for round in 0..rounds {
        eprintln!("round {}/{rounds} ...", round + 1);
        for (i, (name, v, load)) in plan.iter().enumerate() {
            if !wanted(name) {
                continue;
            }
            let (port, child) = &procs[*v];
            let pid = child.0.id();
            if matches!(load, Load::Dpop) {
                make_proofs(per_round);
            }
            // Only the quotas on Redis (variants 2 and 7) call the store's scripts.
            let calls_before = matches!(v, 2 | 7).then(|| redis_calls(redis_port));
            rows[i].measure(pid, || match load {
                Load::One => wrk(&url(*port), None, Some(&one_h), secs, conns),
                Load::Pool => wrk(&url(*port), Some(&script), None, secs, conns),
                Load::Bad => wrk(&url(*port), None, Some(&bad_h), secs, conns),
                Load::Dpop => wrk(&url(*port), Some(&dpop_script), None, secs, conns),
            });
            if let Some(before) = calls_before {
                let served = rows[i].runs.last().map_or(0.0, |r| r.rps) * secs as f64;
                store_calls[i].0 += redis_calls(redis_port) - before;
                store_calls[i].1 += served;
            }
        }
    }
    print_rows(
        &format!("features bench: {rounds} interleaved rounds of {secs}s, wrk -t1 -c{conns} keep-alive; every scopegate on core 0, wrk + nginx + redis on core 1; medians"),
        &rows,
    );
    let per_req = cpu_per_request;
    let cost = |i: usize, base: usize| per_req(&rows[i]) / per_req(&rows[base]) - 1.0;
    println!("\nextra CPU per request against the defaults (targets in brackets):");
    for (what, i, base, target) in [
        ("tracing sample_ratio 0.01", 1, 0, "[<= 3 %]"),
        ("tracing sample_ratio 1.0", 2, 0, "[<= 20 %]"),
        ("quota in-process, one caller", 3, 0, "[<= 5 %]"),
        ("quota on Redis, one caller", 4, 0, "[<= 15 %]"),
        (
            "defaults, a second process, 10,000",
            6,
            5,
            "[the floor: 0 but for noise]",
        ),
        ("quota in-process, 10,000 callers", 7, 5, "[<= 5 %]"),
        ("the same, its second process", 8, 6, "[<= 5 %]"),
        ("quota on Redis, 10,000 callers", 9, 5, "[<= 15 %]"),
        ("quota on Redis 600/min, 10,000", 10, 5, "[reported]"),
        ("DPoP (ES256 proof) vs Bearer", 12, 0, "[reported]"),
    ] {
        if rows[i].runs.is_empty() || rows[base].runs.is_empty() {
            continue;
        }
        println!("  {what:<36} {:+.1} % {target}", cost(i, base) * 100.0);
    }
    // The in-process quota over 10,000 callers, two processes against two: throughput (the
    // issue's measure) and CPU per request, each the mean of the two processes' medians.
    if [5, 6, 7, 8].iter().all(|&i| !rows[i].runs.is_empty()) {
        let mean = |f: &dyn Fn(&Row) -> f64, a: usize, b: usize| (f(&rows[a]) + f(&rows[b])) / 2.0;
        let rps = |r: &Row| r.median_of(|run| run.rps);
        let change = |f: &dyn Fn(&Row) -> f64| (mean(f, 7, 8) / mean(f, 5, 6) - 1.0) * 100.0;
        println!(
            "  quota in-process, 10,000 callers, two processes against two: {:+.1} % req/s, {:+.1} % CPU per request [<= 5 %]",
            change(&rps),
            change(&per_req)
        );
    }
    // How often the quota on Redis went to the store (leases, top-ups, leases taken ahead).
    for (i, (name, ..)) in plan.iter().enumerate() {
        let (calls, served) = store_calls[i];
        if served > 0.0 {
            println!(
                "  {name}: {:.1} store calls per 1,000 requests",
                calls as f64 * 1000.0 / served
            );
        }
    }
    // The quotas on Redis: the replicas each counted (1: it spent credit), and fallbacks.
    for v in [2, 7] {
        let metrics = admin_get(admins[v], "/metrics");
        for series in [
            "scopegate_shared_state_replicas ",
            "scopegate_shared_state_errors_total{op=\"quota\"} ",
        ] {
            let value = metrics
                .lines()
                .find_map(|l| l.strip_prefix(series))
                .unwrap_or("?");
            println!("  {}: {} {value}", variants[v].0, series.trim_end());
        }
    }
    // Spans the exporter could not take would be work it did not do: say how many there were.
    for (what, v) in [("tracing 0.01", 3), ("tracing 1.0", 4)] {
        let metrics = admin_get(admins[v], "/metrics");
        let dropped = metrics
            .lines()
            .find_map(|l| l.strip_prefix("scopegate_spans_dropped_total "))
            .unwrap_or("?");
        println!("  {what}: spans dropped over the whole run: {dropped}");
    }
}

/// Scripts redis-server has run (`EVAL` and `EVALSHA`), from `INFO commandstats`.
fn redis_calls(port: u16) -> u64 {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"INFO commandstats\r\nQUIT\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// The body of a GET on an admin listener.
fn admin_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

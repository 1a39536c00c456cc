//! Per-request costs: path normalization + route lookup by table size, token validation
//! (RS256, ES256, cached), and the whole decision.
//!
//! cargo bench --bench hot_path

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use scopegate::cli::mint;
use scopegate::compile::build;
use scopegate::config::{parse, Source};
use scopegate::snapshot::{unix_now, Snapshot};
use scopegate::{auth, decision, routing::path};

const ISS: &str = "https://issuer.bench/";
const AUD: &str = "https://api.bench";

/// `n` routes over `n / 3` services (a literal, a `{id}` and a `{*rest}` template each), as
/// `[[TABLE]]` entries.
fn route_lines(table: &str, n: usize, scope: impl Fn(usize) -> String) -> String {
    let mut text = String::new();
    for i in 0..n {
        let (method, path) = match i % 3 {
            0 => ("GET", format!("/svc{}/items", i / 3)),
            1 => ("DELETE", format!("/svc{}/items/{{id}}", i / 3)),
            _ => ("GET", format!("/svc{}/files/{{*rest}}", i / 3)),
        };
        text.push_str(&format!(
            "[[{table}]]\nmethods = [\"{method}\"]\npath = \"{path}\"\nscopes = [\"{}\"]\n",
            scope(i)
        ));
    }
    text
}

/// Compile `text` with `jwks` as `jwks.json` beside it.
fn compile(text: String, jwks: &str) -> (Snapshot, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), jwks).unwrap();
    let source = Source {
        name: "bench.toml".into(),
        text,
    };
    let loaded = parse(source, PathBuf::from(dir.path())).unwrap();
    (build(&loaded, 1).unwrap(), dir)
}

/// A config with `n` routes over `n / 3` services, keys from `jwks`.
fn snapshot(n: usize, jwks: &str, algorithm: &str, cache: usize) -> (Snapshot, tempfile::TempDir) {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_file = \"jwks.json\"\nalgorithms = [\"{algorithm}\"]\n[upstreams.api]\nservers = [\"127.0.0.1:2\"]\n[forward]\ntoken_cache_size = {cache}\n"
    );
    text.push_str(&route_lines("routes", n, |i| format!("svc{}:read", i / 3)));
    compile(text, jwks)
}

/// `apis` APIs of `per_api` routes each, on hosts api{i}.bench (every fourth also `*.api{i}.bench`).
fn many_apis(apis: usize, per_api: usize, jwks: &str) -> (Snapshot, tempfile::TempDir) {
    let mut text = format!(
        "[server]\nlisten = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"{ISS}\"\njwks_file = \"jwks.json\"\n[upstreams.api]\nservers = [\"127.0.0.1:2\"]\n"
    );
    for a in 0..apis {
        let wildcard = if a % 4 == 0 {
            format!(", \"*.api{a}.bench\"")
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[apis.a{a}]\naudience = \"https://a{a}.bench\"\nhosts = [\"api{a}.bench\"{wildcard}]\n"
        ));
        text.push_str(&route_lines(&format!("apis.a{a}.routes"), per_api, |_| {
            "svc:read".into()
        }));
    }
    compile(text, jwks)
}

fn sign(pem: &str, kid: &str, scope: &str) -> String {
    let req = mint::TokenRequest {
        kid: Some(kid.into()),
        scope: scope.into(),
        iss: ISS.into(),
        aud: AUD.into(),
        sub: "bench".into(),
        ttl: std::time::Duration::from_secs(3600),
        claims: Vec::new(),
        jkt: None,
        x5t: None,
    };
    mint::mint(pem.as_bytes(), &req, unix_now()).unwrap()
}

fn routing(c: &mut Criterion) {
    let (_, jwks) = mint::generate_rsa_key("k");
    let mut g = c.benchmark_group("normalize+lookup");
    for n in [10usize, 1_000, 10_000] {
        let (snap, _dir) = snapshot(n, &jwks, "RS256", 0);
        let svc = n / 3 / 2;
        let target = format!("/svc{svc}/items/12345");
        g.bench_with_input(BenchmarkId::new("normalized", n), &target, |b, t| {
            b.iter(|| {
                let p = path::normalize(black_box(t)).unwrap();
                black_box(snap.route_set(None).router.lookup(&Method::DELETE, &p));
            })
        });
        let messy = format!("/svc{svc}/./files/../items//12345");
        g.bench_with_input(BenchmarkId::new("needs_normalizing", n), &messy, |b, t| {
            b.iter(|| {
                let p = path::normalize(black_box(t)).unwrap();
                black_box(snap.route_set(None).router.lookup(&Method::DELETE, &p));
            })
        });
    }
    g.finish();

    // Host selection on top: 20 APIs x 500 routes against one API of 1,000 routes.
    let mut g = c.benchmark_group("host+normalize+lookup");
    let (single, _d1) = snapshot(1_000, &jwks, "RS256", 0);
    let target = "/svc80/items/12345";
    g.bench_function("one_api_1000_routes", |b| {
        b.iter(|| {
            let set = single.route_set(Some(black_box("api.bench:443")));
            let p = path::normalize(black_box(target)).unwrap();
            black_box(set.router.lookup(&Method::DELETE, &p));
        })
    });
    let (many, _d2) = many_apis(20, 500, &jwks);
    for host in ["api13.bench:443", "x.api12.bench"] {
        g.bench_with_input(
            BenchmarkId::new("20_apis_x_500_routes", host),
            host,
            |b, h| {
                b.iter(|| {
                    let set = many.route_set(Some(black_box(h)));
                    let p = path::normalize(black_box(target)).unwrap();
                    let found = set.router.lookup(&Method::DELETE, &p);
                    assert!(matches!(found, scopegate::routing::Lookup::Found(_)));
                    black_box(found);
                })
            },
        );
    }
    g.finish();
}

fn tokens(c: &mut Criterion) {
    let (rsa_pem, rsa_jwks) = mint::generate_rsa_key("rsa");
    let (ec_pem, ec_jwks) = mint::generate_ec_key("ec");
    let mut g = c.benchmark_group("token");
    let now = unix_now();

    let (rsa_snap, _d1) = snapshot(10, &rsa_jwks, "RS256", 100_000);
    let rsa_token = sign(&rsa_pem, "rsa", "svc1:read");
    g.bench_function("rs256_uncached", |b| {
        b.iter(|| {
            black_box(
                auth::jwt::verify(
                    black_box(rsa_token.as_bytes()),
                    &rsa_snap.verifier.issuers,
                    &[],
                    &[],
                    now,
                )
                .unwrap(),
            )
        })
    });
    let (ec_snap, _d2) = snapshot(10, &ec_jwks, "ES256", 100_000);
    let ec_token = sign(&ec_pem, "ec", "svc1:read");
    g.bench_function("es256_uncached", |b| {
        b.iter(|| {
            black_box(
                auth::jwt::verify(
                    black_box(ec_token.as_bytes()),
                    &ec_snap.verifier.issuers,
                    &[],
                    &[],
                    now,
                )
                .unwrap(),
            )
        })
    });
    rsa_snap.verifier.verify(rsa_token.as_bytes(), now).unwrap();
    g.bench_function("rs256_cache_hit", |b| {
        b.iter(|| {
            black_box(
                rsa_snap
                    .verifier
                    .verify(black_box(rsa_token.as_bytes()), now)
                    .unwrap(),
            )
        })
    });
    g.finish();
}

fn whole_decision(c: &mut Criterion) {
    let (pem, jwks) = mint::generate_rsa_key("rsa");
    let (snap, _dir) = snapshot(1_000, &jwks, "RS256", 100_000);
    let snap = Arc::new(snap);
    let t = sign(&pem, "rsa", "svc10:read svc11:read");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {t}")).unwrap(),
    );
    headers.insert(http::header::HOST, HeaderValue::from_static("api.bench"));
    let now = unix_now();
    let mut g = c.benchmark_group("decide");
    g.bench_function("allowed_cached_token_1000_routes", |b| {
        b.iter(|| {
            let req =
                decision::Request::new(&Method::DELETE, black_box("/svc10/items/42"), &headers);
            let d = decision::decide(&snap, req, now);
            assert!(matches!(d.decision, decision::Decision::Forward(_)));
            black_box(d);
        })
    });
    g.bench_function("forbidden_cached_token_1000_routes", |b| {
        b.iter(|| {
            let req =
                decision::Request::new(&Method::DELETE, black_box("/svc99/items/42"), &headers);
            black_box(decision::decide(&snap, req, now))
        })
    });
    g.finish();
}

/// What the console's ring costs a refused request: one record in this thread's ring (kept full,
/// so each record also drops the oldest), to be set against a refusal's CPU per request in the
/// load bench (`BENCH_MODE=features`, "bad signature (refusals)").
fn refusal_ring(c: &mut Criterion) {
    use scopegate::edge::console::refusals::{RefusalLog, RefusedRef, KEPT};
    let log = RefusalLog::new();
    let refused = RefusedRef {
        time: std::time::SystemTime::now(),
        method: "DELETE",
        host: "api.bench",
        path: "/contacts/42",
        route: "DELETE /contacts/{id}",
        status: 403,
        decision: "forbidden",
        reason: Some("insufficient_scope"),
        sub: Some("user-1234"),
    };
    for _ in 0..KEPT {
        log.record(&refused);
    }
    c.bench_function("console/refusal_ring_record", |b| {
        b.iter(|| log.record(black_box(&refused)))
    });
}

/// What `[tracing]` costs a request it does not sample (the 99 in 100 of `sample_ratio =
/// 0.01`): the sampling decision, and the `traceparent` the upstream is to continue.
fn unsampled_trace(c: &mut Criterion) {
    use scopegate::edge::traces::{Finished, Traces};
    let settings = scopegate::snapshot::TracingSettings {
        traces_url: "http://127.0.0.1:9/v1/traces".into(),
        sample_ratio: 0.0,
        service_name: "bench".into(),
    };
    let dropped = prometheus::IntCounter::new("dropped", "dropped").unwrap();
    let traces = Traces::start(&settings, dropped).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("api.bench"));
    let server: std::net::SocketAddr = "127.0.0.1:8080".parse().unwrap();
    let done = Finished {
        method: "GET",
        path: "/contacts",
        route: "GET /contacts",
        status: 200,
        decision: "allowed",
        reason: None,
        upstream: Some("api"),
    };
    c.bench_function("traces/unsampled_request", |b| {
        b.iter(|| {
            let now = std::time::SystemTime::now();
            let mut trace = traces.start_request(black_box(&headers), now);
            let mut upstream =
                pingora_http::RequestHeader::build("GET", b"/contacts", None).unwrap();
            traces.start_upstream(&mut trace, server, &mut upstream);
            black_box(trace.finish(&done, now));
            black_box(upstream)
        })
    });
}

criterion_group!(
    benches,
    routing,
    tokens,
    whole_decision,
    refusal_ring,
    unsampled_trace
);
criterion_main!(benches);

//! OpenTelemetry traces end to end: the real binary with `[tracing]` exports to an OTLP/HTTP
//! receiver in this test (protobuf `ExportTraceServiceRequest`s decoded with opentelemetry-proto).
//! A client's `traceparent` is continued (same trace id, parent = the client's span) and sent
//! upstream as the `CLIENT` span's; the `SERVER` span is named by the route label and carries
//! SPEC's attributes; sampling follows the parent, and without one `sample_ratio` (0 here); the
//! access log carries `trace_id` for sampled requests only.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::Value;

/// A span as received, with its resource's `service.name`.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn attr(&self, key: &str) -> Option<String> {
        let value = self
            .span
            .attributes
            .iter()
            .find(|kv| kv.key == key)?
            .value
            .clone()?;
        Some(match value.value? {
            AnyValue::StringValue(s) => s,
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
    }

    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The OTLP/HTTP receiver: POST /v1/traces with a protobuf body, answered with an empty
/// (protobuf) `ExportTraceServiceResponse`.
fn otlp_receiver() -> (SocketAddr, Arc<Mutex<Vec<Received>>>) {
    let spans = Arc::new(Mutex::new(Vec::new()));
    let seen = spans.clone();
    let addr = spawn_upstream(Arc::new(move |req: &EchoRequest| {
        assert_eq!(
            (req.method.as_str(), req.target.as_str()),
            ("POST", "/v1/traces")
        );
        assert_eq!(req.header("content-type"), Some("application/x-protobuf"));
        let export = ExportTraceServiceRequest::decode(req.body.as_slice()).expect("protobuf");
        let mut seen = seen.lock().unwrap();
        for rs in export.resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                seen.push(Received {
                    service: service.clone(),
                    span,
                });
            }
        }
        EchoResponse {
            status: 200,
            body: Vec::new(),
            headers: vec![("Content-Type".into(), "application/x-protobuf".into())],
            delay: None,
        }
    }))
    .unwrap();
    (addr, spans)
}

/// The spans of one trace, once its `SERVER` span has arrived (at most 30 s).
fn trace_of(spans: &Mutex<Vec<Received>>, trace_id: &str) -> Vec<Received> {
    let of = || -> Vec<Received> {
        spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.trace_id() == trace_id)
            .cloned()
            .collect()
    };
    assert!(
        eventually(30, || of()
            .iter()
            .any(|s| s.span.kind == SpanKind::Server as i32)),
        "no SERVER span of trace {trace_id}"
    );
    of()
}

fn access_lines(p: &Proxy) -> Vec<Value> {
    p.log()
        .lines()
        .filter(|l| l.starts_with("{\"ts\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

#[test]
fn spans_continue_the_clients_trace_are_sent_upstream_and_sampled_by_their_parent() {
    let upstream = start_echo("contacts");
    let (otlp, spans) = otlp_receiver();
    let (port, admin) = (free_port(), free_port());
    let tracing = format!(
        "[tracing]\notlp_endpoint = \"http://{otlp}/\"\nsample_ratio = 0.0\nservice_name = \"edge-under-test\"\n"
    );
    let text = config_full(port, Some(admin), &[upstream], &file_issuer(), &tracing)
        .replace("threads = 1", "threads = 1\naccess_log = \"json\"");
    let p = Proxy::start(&text, port);
    let reader = token("read:contacts");

    // A sampled parent: continued, and the upstream gets the CLIENT span as its parent.
    let sampled = format!("traceparent: 00-{TRACE}-{CLIENT_SPAN}-01\r\ntracestate: vendor=abc\r\n");
    let r = p.request("GET", "/contacts", Some(&reader), &sampled);
    assert_eq!(r.status, 200);
    let sent = r
        .upstream_header("traceparent")
        .expect("traceparent sent upstream");
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE, "01"),
        "{sent}"
    );
    assert_ne!(
        parts[2], CLIENT_SPAN,
        "the upstream's parent is scopegate's span: {sent}"
    );
    assert_eq!(
        r.upstream_header("tracestate").as_deref(),
        Some("vendor=abc")
    );

    let trace = trace_of(&spans, TRACE);
    assert!(
        eventually(30, || trace_of(&spans, TRACE).len() == 2),
        "SERVER and CLIENT: {trace:?}"
    );
    let trace = trace_of(&spans, TRACE);
    let server = trace
        .iter()
        .find(|s| s.span.kind == SpanKind::Server as i32)
        .unwrap();
    let client = trace
        .iter()
        .find(|s| s.span.kind == SpanKind::Client as i32)
        .unwrap();
    assert_eq!(server.service, "edge-under-test");
    assert_eq!(
        server.span.name, "GET /contacts",
        "named by the route label"
    );
    assert_eq!(server.parent(), CLIENT_SPAN, "continues the client's span");
    for (key, want) in [
        ("http.request.method", "GET"),
        ("http.route", "GET /contacts"),
        ("http.response.status_code", "200"),
        ("url.path", "/contacts"),
        ("scopegate.decision", "allowed"),
        ("scopegate.reason", ""),
        ("scopegate.upstream", "contacts"),
    ] {
        assert_eq!(server.attr(key).as_deref(), Some(want), "{key}: {server:?}");
    }
    assert_eq!(
        client.parent(),
        server.span_id(),
        "the CLIENT span is the SERVER's child"
    );
    assert_eq!(
        client.span_id(),
        parts[2],
        "the upstream's traceparent names the CLIENT span"
    );
    assert_eq!(client.attr("server.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        client.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert!(client.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);

    // A refusal under a sampled parent: a SERVER span with the decision and reason, no CLIENT.
    let refused_trace = "0af7651916cd43dd8448eb211c80319c";
    let header = format!("traceparent: 00-{refused_trace}-b7ad6b7169203331-01\r\n");
    let r = p.request("DELETE", "/contacts/7", Some(&reader), &header);
    assert_eq!(r.status, 403);
    let refused = trace_of(&spans, refused_trace);
    assert_eq!(refused.len(), 1, "nothing was sent upstream: {refused:?}");
    let span = &refused[0];
    assert_eq!(span.span.name, "DELETE /contacts/{id}");
    assert_eq!(
        span.attr("http.response.status_code").as_deref(),
        Some("403")
    );
    assert_eq!(
        span.attr("scopegate.decision").as_deref(),
        Some("forbidden")
    );
    assert_eq!(
        span.attr("scopegate.reason").as_deref(),
        Some("insufficient_scope")
    );
    assert_eq!(span.attr("scopegate.upstream").as_deref(), Some(""));

    // An unsampled parent is not sampled, and a request without a parent is sampled at
    // `sample_ratio` (0): neither is exported, and the upstream still gets the trace's ids.
    let unsampled = "11111111111111111111111111111111";
    let header = format!("traceparent: 00-{unsampled}-2222222222222222-00\r\n");
    let r = p.request("GET", "/contacts", Some(&reader), &header);
    let sent = r.upstream_header("traceparent").unwrap();
    assert!(
        sent.starts_with(&format!("00-{unsampled}-")) && sent.ends_with("-00"),
        "{sent}"
    );
    // A `tracestate` without a `traceparent` belongs to no trace: it is not passed on.
    let r = p.request("GET", "/contacts", Some(&reader), "tracestate: stray=1\r\n");
    let root = r
        .upstream_header("traceparent")
        .expect("a trace of its own, unsampled");
    assert!(root.ends_with("-00"), "{root}");
    assert_eq!(r.upstream_header("tracestate"), None);
    // A later sampled request is exported after them (the export queue keeps its order).
    let last = "99999999999999999999999999999999";
    let header = format!("traceparent: 00-{last}-3333333333333333-01\r\n");
    let r = p.request("GET", "/contacts", Some(&reader), &header);
    assert_eq!(
        r.upstream_header("tracestate"),
        None,
        "no empty tracestate is sent"
    );
    trace_of(&spans, last);
    let exported: Vec<String> = spans
        .lock()
        .unwrap()
        .iter()
        .map(Received::trace_id)
        .collect();
    assert!(!exported.contains(&unsampled.to_string()), "{exported:?}");
    let root_trace = root.split('-').nth(1).unwrap().to_string();
    assert!(!exported.contains(&root_trace), "{exported:?}");

    // The access log names the trace of sampled requests only.
    assert!(
        eventually(10, || access_lines(&p).len() >= 5),
        "{}",
        p.log()
    );
    let lines = access_lines(&p);
    let traced: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["trace_id"].as_str())
        .collect();
    assert_eq!(traced, [TRACE, refused_trace, last], "{lines:?}");

    let metrics = http_get(admin_addr(admin), "/metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(text.contains("scopegate_spans_dropped_total 0"), "{text}");
}

#[test]
fn without_tracing_a_clients_trace_headers_pass_through_untouched() {
    let p = Proxy::standard("");
    let header = format!("traceparent: 00-{TRACE}-{CLIENT_SPAN}-01\r\n");
    let r = p.request("GET", "/contacts", Some(&token("read:contacts")), &header);
    assert_eq!(
        r.upstream_header("traceparent"),
        Some(format!("00-{TRACE}-{CLIENT_SPAN}-01")),
        "no span of scopegate's"
    );
    assert!(eventually(10, || p.log().contains("access method=")));
    assert!(!p.log().contains("trace_id"), "{}", p.log());
}

#[test]
fn a_bad_tracing_section_is_a_config_error() {
    let upstream: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for (tracing, want) in [
        (
            "otlp_endpoint = \"127.0.0.1:4318\"",
            "tracing.otlp_endpoint",
        ),
        (
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nsample_ratio = 1.5",
            "tracing.sample_ratio",
        ),
        (
            "otlp_endpoint = \"http://127.0.0.1:4318\"\nsampling = 1",
            "unknown field `sampling`",
        ),
    ] {
        let text = config(free_port(), &[upstream], &format!("[tracing]\n{tracing}\n"));
        let (ok, _, stderr, _, _dir) = check(&text, &[("jwks.json", &key().jwks)]);
        assert!(!ok && stderr.contains(want), "{tracing}: {stderr}");
    }
}

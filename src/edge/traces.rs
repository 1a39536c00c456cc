//! OpenTelemetry traces (`[tracing]`): a `SERVER` span per request, named by its route label, and
//! a `CLIENT` child for the upstream exchange; W3C `traceparent`/`tracestate` continued from the
//! client and sent upstream; parent-based sampling at `sample_ratio`.
//!
//! Export is off the request path: an ended span is handed to a bounded queue with `try_send`
//! (a span that does not fit is dropped and counted in `scopegate_spans_dropped_total`), and one
//! exporter thread batches the queue and posts it over OTLP/HTTP (protobuf) with the async
//! reqwest client on a runtime of its own. Without `[tracing]` the gate holds no `Traces` and
//! the request path does no tracing work at all.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    Span as _, SpanBuilder, SpanId, SpanKind, TraceContextExt, TraceId, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator as _, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider, Span, SpanData,
    SpanExporter as _, SpanProcessor,
};
use opentelemetry_sdk::Resource;
use pingora_http::RequestHeader;
use prometheus::IntCounter;

use crate::snapshot::TracingSettings;

/// Ended spans waiting for the exporter; past it they are dropped (and counted). A tick's worth
/// of two spans per request at 40,000 requests/s.
const QUEUE: usize = 4096;
/// How often the exporter looks at the queue when it found it empty.
const TICK: Duration = Duration::from_millis(50);
/// Spans in one export request at most.
const MAX_BATCH: usize = 512;
/// How long the exporter gathers spans after the first one before it sends them.
const BATCH_WINDOW: Duration = Duration::from_secs(1);
/// One export request's limit (the exporter thread waits for nothing else meanwhile).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The tracer of a process with `[tracing]`.
pub struct Traces {
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// The sampler's own rule, applied first: an unsampled request never reaches the SDK.
    ratio: f64,
    ids: RandomIdGenerator,
    /// Kept so the tracer's processor lives as long as the gate.
    _provider: SdkTracerProvider,
}

/// One request's spans: the `SERVER` span (in its context) and the `CLIENT` span of the
/// upstream exchange, once there is one; or, for a request that is not sampled, only the ids
/// the upstream is to continue (no span is built for it at all).
pub enum RequestTrace {
    Sampled {
        server: Context,
        client: Option<Span>,
    },
    Unsampled {
        trace_id: TraceId,
        tracestate: Option<http::HeaderValue>,
    },
}

/// What the `SERVER` span is given when the request is over.
pub struct Finished<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub decision: &'a str,
    pub reason: Option<&'a str>,
    pub upstream: Option<&'a str>,
}

/// Why `[tracing]` could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("tracing: {0}")]
pub struct TracingError(String);

impl Traces {
    /// The tracer, its bounded queue and the exporter thread.
    pub fn start(settings: &TracingSettings, dropped: IntCounter) -> Result<Traces, TracingError> {
        let client = reqwest::Client::builder()
            .timeout(EXPORT_TIMEOUT)
            .connect_timeout(Duration::from_secs(3))
            .user_agent(concat!("scopegate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TracingError(format!("no HTTP client for OTLP export: {e}")))?;
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        let mut exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(settings.traces_url.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| TracingError(format!("OTLP exporter for {}: {e}", settings.traces_url)))?;
        let resource = Resource::builder_empty()
            .with_service_name(settings.service_name.clone())
            .build();
        exporter.set_resource(&resource);
        let (queue, spans) = sync_channel(QUEUE);
        let url = settings.traces_url.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_spans(spans, exporter, &url))
            .map_err(|e| TracingError(format!("exporter thread: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(QueueProcessor { queue, dropped })
            // The ratio is applied in `start_request`, before the SDK: what reaches it is sampled.
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource)
            .build();
        Ok(Traces {
            tracer: provider.tracer("scopegate"),
            propagator: TraceContextPropagator::new(),
            ratio: settings.sample_ratio,
            ids: RandomIdGenerator::default(),
            _provider: provider,
        })
    }

    /// The request's `SERVER` span, continuing the client's `traceparent` when it sent one
    /// (from any client: it only chooses the sampling and the ids).
    pub fn start_request(&self, headers: &HeaderMap, started: SystemTime) -> Box<RequestTrace> {
        // Most requests carry no `traceparent`: they skip the propagator (and its context).
        let parent = if headers.contains_key("traceparent") {
            self.propagator.extract(&Headers(headers))
        } else {
            Context::new()
        };
        let remote = parent.span().span_context().clone();
        // The decision the SDK's parent-based sampler would make, made here first so that the
        // requests it leaves out cost an id and a header, not a span.
        let (trace_id, sampled) = if remote.is_valid() {
            (remote.trace_id(), remote.is_sampled())
        } else {
            let id = self.ids.new_trace_id();
            (id, ratio_samples(self.ratio, id))
        };
        if !sampled {
            // A `tracestate` belongs to the `traceparent` it came with (W3C Trace Context
            // §3.3): without a valid one it is not passed on.
            let tracestate = headers
                .get("tracestate")
                .filter(|_| remote.is_valid())
                .cloned();
            return Box::new(RequestTrace::Unsampled {
                trace_id,
                tracestate,
            });
        }
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name("request")
                .with_kind(SpanKind::Server)
                .with_start_time(started),
            &parent,
        );
        Box::new(RequestTrace::Sampled {
            server: parent.with_span(span),
            client: None,
        })
    }

    /// The `CLIENT` span of the upstream exchange, and its `traceparent`/`tracestate` in the
    /// upstream request (replacing the client's).
    pub fn start_upstream(
        &self,
        trace: &mut RequestTrace,
        server: std::net::SocketAddr,
        upstream: &mut RequestHeader,
    ) {
        let (server_cx, client) = match trace {
            RequestTrace::Sampled { server, client } => (server, client),
            RequestTrace::Unsampled {
                trace_id,
                tracestate,
            } => {
                // W3C Trace Context §3.2: version 00, this hop's span id, flags 00 (not sampled).
                if let Ok(value) = traceparent(*trace_id, self.ids.new_span_id()) {
                    let _ = upstream.insert_header("traceparent", value);
                }
                match tracestate {
                    Some(state) => {
                        let _ = upstream.insert_header("tracestate", state.clone());
                    }
                    None => {
                        upstream.remove_header("tracestate");
                    }
                }
                return;
            }
        };
        let method = upstream.method.as_str().to_string();
        if let Some(mut earlier) = client.take() {
            // A retry on another server: the first attempt is over.
            earlier.end();
        }
        let span = self.tracer.build_with_context(
            SpanBuilder::from_name(method.clone())
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("http.request.method", method),
                    KeyValue::new("server.address", server.ip().to_string()),
                    KeyValue::new("server.port", i64::from(server.port())),
                ]),
            server_cx,
        );
        let cx = Context::new().with_remote_span_context(span.span_context().clone());
        let mut fields = Fields(Vec::with_capacity(2));
        self.propagator.inject_context(&cx, &mut fields);
        for (name, value) in fields.0 {
            // An empty `tracestate` is not sent: the client's, if any, goes with it.
            if value.is_empty() {
                upstream.remove_header(&name);
            } else {
                let _ = upstream.insert_header(name, value);
            }
        }
        *client = Some(span);
    }
}

impl RequestTrace {
    /// End both spans with what became of the request; the trace id when it is sampled (for
    /// the access log).
    pub fn finish(self, done: &Finished<'_>, at: SystemTime) -> Option<String> {
        let RequestTrace::Sampled { server, client } = self else {
            return None;
        };
        let status = i64::from(done.status);
        if let Some(mut client) = client {
            if done.status > 0 {
                client.set_attribute(KeyValue::new("http.response.status_code", status));
            }
            client.end_with_timestamp(at);
        }
        let span = server.span();
        let sampled = span.span_context().is_sampled();
        if span.is_recording() {
            span.update_name(done.route.to_string());
            span.set_attributes([
                KeyValue::new("http.request.method", done.method.to_string()),
                KeyValue::new("http.route", done.route.to_string()),
                KeyValue::new("http.response.status_code", status),
                KeyValue::new("url.path", done.path.to_string()),
                KeyValue::new("scopegate.decision", done.decision.to_string()),
                KeyValue::new("scopegate.reason", done.reason.unwrap_or("").to_string()),
                KeyValue::new(
                    "scopegate.upstream",
                    done.upstream.unwrap_or("").to_string(),
                ),
            ]);
        }
        span.end_with_timestamp(at);
        sampled.then(|| span.span_context().trace_id().to_string())
    }
}

/// `00-{trace id}-{span id}-00` (W3C Trace Context §3.2: version 00, not sampled), written
/// into a fixed buffer rather than through `format!`.
fn traceparent(
    trace_id: TraceId,
    span_id: SpanId,
) -> Result<http::HeaderValue, http::header::InvalidHeaderValue> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    let ids = trace_id.to_bytes().into_iter().chain(span_id.to_bytes());
    // The trace id's 32 digits from index 3, the span id's 16 from index 36.
    let at = (3..35).step_by(2).chain((36..52).step_by(2));
    for (byte, i) in ids.zip(at) {
        out[i] = HEX[usize::from(byte >> 4)];
        out[i + 1] = HEX[usize::from(byte & 15)];
    }
    http::HeaderValue::from_bytes(&out)
}

/// `TraceIdRatioBased`'s rule (OpenTelemetry's SDK): the trace id's lower 64 bits, shifted
/// right once, below `ratio` of 2^63.
fn ratio_samples(ratio: f64, id: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bytes = id.to_bytes();
    let low = u64::from_be_bytes(bytes[8..16].try_into().unwrap_or([0; 8]));
    (low >> 1) < (ratio * (1u64 << 63) as f64) as u64
}

/// Request headers as the propagator reads them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The fields the propagator writes, to be set on the upstream request.
struct Fields(Vec<(String, String)>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

/// Hands ended spans to the exporter thread without ever waiting.
struct QueueProcessor {
    queue: SyncSender<SpanData>,
    dropped: IntCounter,
}

impl std::fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueProcessor")
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The exporter thread: drains the queue every `TICK` (it never blocks in `recv`, so a request
/// handing over a span never has to wake it: no futex, no context switch per span), sends a
/// batch when it holds `MAX_BATCH` spans or its oldest span has waited `BATCH_WINDOW`, and
/// goes on draining without sleeping while the queue is not empty.
fn export_spans(spans: Receiver<SpanData>, exporter: opentelemetry_otlp::SpanExporter, url: &str) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("tracing: no runtime for the OTLP exporter ({e}); spans are dropped");
            return;
        }
    };
    let mut failing = false;
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_BATCH);
    let mut oldest = Instant::now();
    loop {
        let (drained, open) = drain(&spans, &mut batch);
        if batch.len() == drained && drained > 0 {
            oldest = Instant::now();
        }
        let due = batch.len() >= MAX_BATCH || oldest.elapsed() >= BATCH_WINDOW || !open;
        if !batch.is_empty() && due {
            let n = batch.len();
            let sent = std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH));
            match runtime.block_on(exporter.export(sent)) {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(url, "tracing: OTLP export works again");
                }
                Ok(()) => {}
                // Once per outage, not once per batch.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(url, spans = n, "tracing: OTLP export failed: {e}");
                }
                Err(_) => {}
            }
            continue;
        }
        if !open {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// Moves queued spans into `batch` until it holds `MAX_BATCH` or the queue is empty: how many
/// it moved, and whether the queue is still open.
fn drain(spans: &Receiver<SpanData>, batch: &mut Vec<SpanData>) -> (usize, bool) {
    let mut moved = 0;
    while batch.len() < MAX_BATCH {
        match spans.try_recv() {
            Ok(span) => {
                batch.push(span);
                moved += 1;
            }
            Err(TryRecvError::Empty) => return (moved, true),
            Err(TryRecvError::Disconnected) => return (moved, false),
        }
    }
    (moved, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unsampled_traceparent_is_version_00_with_both_ids_in_lowercase_hex() {
        let trace = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap();
        let span = SpanId::from_hex("b7ad6b7169203331").unwrap();
        assert_eq!(
            traceparent(trace, span).unwrap(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        );
        assert_eq!(
            traceparent(trace, span).unwrap(),
            format!("00-{trace}-{span}-00").as_str()
        );
    }

    #[test]
    fn the_ratio_rule_samples_its_share_of_trace_ids() {
        let ids = RandomIdGenerator::default();
        let picked = |ratio: f64| {
            (0..20_000)
                .filter(|_| ratio_samples(ratio, ids.new_trace_id()))
                .count()
        };
        assert_eq!(picked(0.0), 0);
        assert_eq!(picked(1.0), 20_000);
        let tenth = picked(0.1);
        assert!((1_600..2_400).contains(&tenth), "{tenth} of 20,000 at 0.1");
    }
}

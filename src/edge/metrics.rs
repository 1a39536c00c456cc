//! The Prometheus families, registered once in a registry of our own. Label values come only
//! from the config (route patterns, upstream and issuer names) and fixed vocabularies.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::auth::RejectionReason;
use crate::decision::DecisionLabel;
use crate::upstream::ResponseClass;

/// Series handles for one snapshot's routes and upstreams. Each is resolved on first use, so a
/// label set that never occurs never becomes a series, and a request only pays an atomic add.
#[derive(Debug, Default)]
pub struct LabelCache {
    routes: Vec<RouteHandles>,
    /// For requests that matched no route.
    none: RouteHandles,
    upstreams: Vec<[OnceLock<IntCounter>; ResponseClass::ALL.len()]>,
}

#[derive(Debug, Default)]
struct RouteHandles {
    decisions: [OnceLock<IntCounter>; DecisionLabel::ALL.len()],
    duration: OnceLock<Histogram>,
}

impl LabelCache {
    pub fn new(routes: usize, upstreams: usize) -> LabelCache {
        LabelCache {
            routes: (0..routes).map(|_| RouteHandles::default()).collect(),
            none: RouteHandles::default(),
            upstreams: (0..upstreams).map(|_| Default::default()).collect(),
        }
    }
}

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// One counter per `RejectionReason`, resolved once.
    token_rejections: Vec<IntCounter>,
    upstream_responses: IntCounterVec,
    jwks_refreshes: IntCounterVec,
    config_reloads: IntCounterVec,
    config_generation: IntGauge,
    /// Access-log lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    quota_rejections: IntCounterVec,
    shared_state_errors: IntCounterVec,
    /// Replicas sharing the store that quotas spend credit for (0: none spent).
    pub shared_state_replicas: IntGauge,
    /// Spans that did not fit the exporter's queue.
    pub spans_dropped: IntCounter,
}

/// The `op` label of `scopegate_shared_state_errors_total`.
pub const SHARED_STATE_OPS: [&str; 3] = ["replay", "quota", "nonce"];

/// From 100 µs to 10 s: an edge proxy's own work is sub-millisecond, its upstreams take longer.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// A metric defined here, registered once (both can only fail on a programming error).
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric definition");
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

/// The request duration histogram, the config generation, and the dropped-lines and
/// dropped-spans counters.
fn unlabelled(registry: &Registry) -> (HistogramVec, [IntGauge; 2], IntCounter, IntCounter) {
    let duration = register(
        registry,
        HistogramVec::new(
            HistogramOpts::new(
                "scopegate_request_duration_seconds",
                "Time from request to response, by route.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        ),
    );
    let config_generation = register(
        registry,
        IntGauge::new(
            "scopegate_config_generation",
            "Generation of the config in use (1 at start).",
        ),
    );
    let shared_state_replicas = register(
        registry,
        IntGauge::new(
            "scopegate_shared_state_replicas",
            "Replicas sharing the store, as this one last counted them (0 while it spends no quota credit).",
        ),
    );
    let access_log_dropped = register(
        registry,
        IntCounter::new(
            "scopegate_access_log_dropped_total",
            "Access-log lines dropped because the writer could not keep up.",
        ),
    );
    let spans_dropped = register(
        registry,
        IntCounter::new(
            "scopegate_spans_dropped_total",
            "Trace spans dropped because the exporter's queue was full.",
        ),
    );
    (
        duration,
        [config_generation, shared_state_replicas],
        access_log_dropped,
        spans_dropped,
    )
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counters = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let requests = counters(
            "scopegate_requests_total",
            "Requests by route pattern and decision.",
            &["route", "decision"],
        );
        let token_rejections = counters(
            "scopegate_token_rejections_total",
            "Bearer tokens refused, by reason.",
            &["reason"],
        );
        let upstream_responses = counters(
            "scopegate_upstream_responses_total",
            "Upstream responses by status class.",
            &["upstream", "class"],
        );
        let jwks_refreshes = counters(
            "scopegate_jwks_refreshes_total",
            "JWKS fetches by issuer and result.",
            &["issuer", "result"],
        );
        let config_reloads = counters(
            "scopegate_config_reloads_total",
            "Config reloads by result.",
            &["result"],
        );
        let quota_rejections = counters(
            "scopegate_quota_rejections_total",
            "Requests refused (429) by quota.",
            &["quota"],
        );
        let shared_state_errors = counters(
            "scopegate_shared_state_errors_total",
            "Shared state operations that failed, timed out, or were not tried while the store was unreachable (each a request that fell back), by operation.",
            &["op"],
        );
        for op in SHARED_STATE_OPS {
            shared_state_errors.with_label_values(&[op]);
        }
        let (
            duration,
            [config_generation, shared_state_replicas],
            access_log_dropped,
            spans_dropped,
        ) = unlabelled(&registry);
        // Series that exist from the start, at 0.
        let rejection_counters = RejectionReason::ALL
            .iter()
            .map(|reason| token_rejections.with_label_values(&[reason.as_str()]))
            .collect();
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            requests,
            duration,
            token_rejections: rejection_counters,
            upstream_responses,
            jwks_refreshes,
            config_reloads,
            config_generation,
            access_log_dropped,
            quota_rejections,
            shared_state_errors,
            shared_state_replicas,
            spans_dropped,
        }
    }

    /// A 429 of the quota labelled `quota` (`API NAME`, or `NAME` at the top level).
    pub fn quota_rejected(&self, quota: &str) {
        self.quota_rejections.with_label_values(&[quota]).inc();
    }

    /// A failed operation on the shared store (`op` one of `SHARED_STATE_OPS`).
    pub fn shared_state_error(&self, op: &str) {
        self.shared_state_errors.with_label_values(&[op]).inc();
    }
    /// Every `scopegate_requests_total` series: (route, decision, count), for the console.
    pub fn request_counts(&self) -> Vec<(String, String, u64)> {
        use prometheus::core::Collector;
        let mut counts = Vec::new();
        for family in self.requests.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                        .unwrap_or_default()
                };
                counts.push((
                    label("route"),
                    label("decision"),
                    m.get_counter().get_value() as u64,
                ));
            }
        }
        counts
    }

    /// Count a request under its route and decision. With the snapshot's `LabelCache` the
    /// series handles are resolved once per label set instead of hashed on every request.
    pub fn request(
        &self,
        labels: &LabelCache,
        route: Option<usize>,
        route_label: &str,
        decision: DecisionLabel,
        elapsed: Duration,
    ) {
        let handles = match route {
            Some(r) => &labels.routes[r],
            None => &labels.none,
        };
        handles.decisions[decision.index()]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[route_label, decision.as_str()])
            })
            .inc();
        handles
            .duration
            .get_or_init(|| self.duration.with_label_values(&[route_label]))
            .observe(elapsed.as_secs_f64());
    }

    pub fn token_rejected(&self, reason: RejectionReason) {
        self.token_rejections[reason.index()].inc();
    }

    pub fn upstream_response(
        &self,
        labels: &LabelCache,
        upstream: usize,
        name: &str,
        class: ResponseClass,
    ) {
        labels.upstreams[upstream][class.index()]
            .get_or_init(|| {
                self.upstream_responses
                    .with_label_values(&[name, class.as_str()])
            })
            .inc();
    }

    /// Every issuer's `scopegate_jwks_refreshes_total` series, at 0 until a fetch: the family is
    /// on `/metrics` from the start, also when keys come from `jwks_file` only. The series of an
    /// issuer the config no longer has are removed (a reload dropped it).
    pub fn jwks_issuers<'i>(&self, issuers: impl Iterator<Item = &'i str>) {
        let issuers: Vec<&str> = issuers.collect();
        for family in prometheus::core::Collector::collect(&self.jwks_refreshes) {
            for series in family.get_metric() {
                let label = |name: &str| {
                    series
                        .get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_string())
                };
                if let (Some(issuer), Some(result)) = (label("issuer"), label("result")) {
                    if !issuers.contains(&issuer.as_str()) {
                        let _ = self
                            .jwks_refreshes
                            .remove_label_values(&[issuer.as_str(), result.as_str()]);
                    }
                }
            }
        }
        for issuer in issuers {
            for result in ["ok", "error"] {
                self.jwks_refreshes.with_label_values(&[issuer, result]);
            }
        }
    }

    pub fn jwks_refresh(&self, issuer: &str, ok: bool) {
        self.jwks_refreshes
            .with_label_values(&[issuer, if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn config_reload(&self, ok: bool) {
        self.config_reloads
            .with_label_values(&[if ok { "ok" } else { "error" }])
            .inc();
    }

    pub fn set_generation(&self, generation: u64) {
        self.config_generation.set(generation as i64);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .ok();
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_handles_count_into_the_same_series_as_the_registry() {
        let m = Metrics::new();
        let labels = LabelCache::new(2, 1);
        for _ in 0..3 {
            m.request(
                &labels,
                Some(1),
                "GET /a",
                DecisionLabel::Allowed,
                Duration::from_micros(50),
            );
        }
        m.request(
            &labels,
            None,
            "none",
            DecisionLabel::NotFound,
            Duration::from_micros(50),
        );
        // A second snapshot's handles land in the same series.
        let next = LabelCache::new(2, 1);
        m.request(
            &next,
            Some(1),
            "GET /a",
            DecisionLabel::Allowed,
            Duration::from_micros(50),
        );
        m.upstream_response(&labels, 0, "api", ResponseClass::Success);
        m.token_rejected(RejectionReason::Expired);
        let text = m.render();
        for want in [
            "scopegate_requests_total{decision=\"allowed\",route=\"GET /a\"} 4",
            "scopegate_requests_total{decision=\"not_found\",route=\"none\"} 1",
            "scopegate_request_duration_seconds_count{route=\"GET /a\"} 4",
            "scopegate_upstream_responses_total{class=\"2xx\",upstream=\"api\"} 1",
            "scopegate_token_rejections_total{reason=\"expired\"} 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        // Nothing resolved, nothing exported: route 0 never had a request.
        assert!(!text.contains("route=\"GET /b\""));
    }

    #[test]
    fn every_rejection_reason_is_exported_from_the_start() {
        let text = Metrics::new().render();
        for r in RejectionReason::ALL {
            let series = format!(
                "scopegate_token_rejections_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&series), "{series}");
        }
    }
}

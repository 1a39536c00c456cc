//! The Prometheus families, registered once in a registry of our own. Label values come only
//! from the config (route patterns, upstream and issuer names) and fixed vocabularies.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    token_rejections: IntCounterVec,
    upstream_responses: IntCounterVec,
    jwks_refreshes: IntCounterVec,
    config_reloads: IntCounterVec,
    config_generation: IntGauge,
}

/// From 100 µs to 10 s: an edge proxy's own work is sub-millisecond, its upstreams take longer.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "scopegate_requests_total",
                "Requests by route pattern and decision.",
            ),
            &["route", "decision"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "scopegate_request_duration_seconds",
                "Time from request to response, by route.",
            )
            .buckets(BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap();
        let token_rejections = IntCounterVec::new(
            Opts::new(
                "scopegate_token_rejections_total",
                "Bearer tokens refused, by reason.",
            ),
            &["reason"],
        )
        .unwrap();
        let upstream_responses = IntCounterVec::new(
            Opts::new(
                "scopegate_upstream_responses_total",
                "Upstream responses by status class.",
            ),
            &["upstream", "class"],
        )
        .unwrap();
        let jwks_refreshes = IntCounterVec::new(
            Opts::new(
                "scopegate_jwks_refreshes_total",
                "JWKS fetches by issuer and result.",
            ),
            &["issuer", "result"],
        )
        .unwrap();
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "scopegate_config_reloads_total",
                "Config reloads by result.",
            ),
            &["result"],
        )
        .unwrap();
        let config_generation = IntGauge::new(
            "scopegate_config_generation",
            "Generation of the config in use (1 at start).",
        )
        .unwrap();
        for c in [
            &requests,
            &token_rejections,
            &upstream_responses,
            &jwks_refreshes,
            &config_reloads,
        ] {
            registry.register(Box::new(c.clone())).unwrap();
        }
        registry.register(Box::new(duration.clone())).unwrap();
        registry
            .register(Box::new(config_generation.clone()))
            .unwrap();
        for reason in crate::token::Rejection::REASONS {
            token_rejections.with_label_values(&[reason]);
        }
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        Metrics {
            registry,
            requests,
            duration,
            token_rejections,
            upstream_responses,
            jwks_refreshes,
            config_reloads,
            config_generation,
        }
    }

    pub fn request(&self, route: &str, decision: &str, elapsed: Duration) {
        self.requests.with_label_values(&[route, decision]).inc();
        self.duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
    }

    pub fn token_rejected(&self, reason: &str) {
        self.token_rejections.with_label_values(&[reason]).inc();
    }

    pub fn upstream_response(&self, upstream: &str, class: &str) {
        self.upstream_responses
            .with_label_values(&[upstream, class])
            .inc();
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

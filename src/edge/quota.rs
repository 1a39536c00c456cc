//! Step 7b on the request path: a request `decide` allowed is counted under its route's
//! quotas (`crate::quota`); over one, it is answered 429 instead of forwarded. The counts live
//! as long as the process (a reload keeps them); the shared store is the one of the config the
//! process started with.

use std::sync::Arc;

use http::HeaderValue;
use pingora_proxy::Session;

use super::metrics::Metrics;
use super::proxy::{Gate, RequestCtx};
use crate::decision::{Answer, Refusal};
use crate::quota::{monotonic_ms, Requester, Verdict};
use crate::shared_state::SharedStore;
use crate::snapshot::Snapshot;

/// The client of the snapshot's `[shared_state]`, when it has one: quota counts and DPoP
/// replay detection go through it.
pub fn shared_store(snapshot: &Snapshot, metrics: &Arc<Metrics>) -> Option<Arc<SharedStore>> {
    snapshot.shared_state.as_ref().and_then(|settings| {
        let (m, gauge) = (metrics.clone(), metrics.shared_state_replicas.clone());
        let on_error = Box::new(move |op| m.shared_state_error(op));
        let on_replicas = Box::new(move |n: u64| gauge.set(n as i64));
        match SharedStore::start(settings, on_error, on_replicas) {
            Ok(store) => Some(Arc::new(store)),
            Err(e) => {
                tracing::error!(error = %e, "shared state: cannot start its thread; quotas are counted in-process and DPoP requests refused");
                None
            }
        }
    })
}

/// The store is the one the process started with: say so when a reload names another.
pub fn warn_if_store_changed(running: &Snapshot, next: &Snapshot) {
    let url = |s: &Snapshot| s.shared_state.as_ref().map(|s| (s.url.clone(), s.timeout));
    if url(running) != url(next) {
        tracing::warn!(
            setting = "shared_state.url, shared_state.timeout_ms",
            "this setting applies at the next restart"
        );
    }
}

impl Gate {
    /// Step 7b for a request about to be forwarded (report-only ones that would have been
    /// refused are not counted): the 429 to send instead, when a quota is used up.
    pub(super) async fn quota_step(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
    ) -> Option<Answer> {
        let route = ctx.route?;
        let live = ctx.live.as_ref()?;
        let snapshot = &live.snapshot;
        // Decided at load: a route without quotas pays only this look.
        let under = &snapshot.routes[route].quotas;
        if under.is_empty() || ctx.report.is_some() || ctx.forward.is_none() {
            return None;
        }
        let principal = ctx.principal.as_deref();
        let who = Requester {
            claims: principal.map_or(&[], |p| p.claims.as_slice()),
            callers: principal.map_or(&[], |p| &p.callers),
            // The address scopegate believes (behind `trusted_proxies`, from X-Forwarded-For).
            ip: super::proxy::believed_client(session, snapshot),
        };
        let method = &session.req_header().method;
        let now = monotonic_ms(ctx.started);
        let verdict = self
            .quotas
            .check(&snapshot.quotas, under, method, &who, now)
            .await;
        match verdict {
            Verdict::Allowed(standing) => {
                ctx.rate_limit = standing.and_then(|s| {
                    let q = &snapshot.quotas[s.quota];
                    Some((q.policy.clone(), q.rate_limit(s.remaining, s.reset)?))
                });
                None
            }
            Verdict::Exceeded { quota, retry_after } => {
                self.metrics.quota_rejected(&snapshot.quotas[quota].label);
                let refusal = Refusal::RateLimited {
                    route,
                    quota,
                    retry_after,
                };
                ctx.forward = None;
                ctx.decision = refusal.label();
                ctx.reason = refusal.reason();
                let mut answer = refusal.response(snapshot);
                answer.headers.extend(ctx.cors_headers.iter().cloned());
                Some(answer)
            }
        }
    }
}

/// `RateLimit-Policy` and `RateLimit` of an allowed response.
pub(super) type RateLimitFields = Option<(HeaderValue, HeaderValue)>;

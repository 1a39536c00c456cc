//! Per-caller request quotas (SPEC "Quotas", step 7b): at most `limit` requests per caller in
//! any `window_seconds`, counted in-process (`window`, in a bounded map: `counters`), or
//! shared by every replica through `[shared_state]` (`shared`), falling back to in-process
//! counting whenever the store does not answer in time.
//!
//! Times are milliseconds on a monotonic clock, passed in.

mod counters;
pub mod shared;
pub mod window;

use std::borrow::Cow;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use http::{HeaderValue, Method};
use serde_json::Value;
use tokio::sync::Notify;

use counters::Counters;
pub use counters::MAX_CALLERS;
use shared::{credit, Asked, GiveBacks, Lease, Refill, Step, CREDIT_FROM};
use window::{Take, Window, SUB_BUCKETS};

use crate::shared_state::{Grant, LeaseAsk, SharedStore};

/// A compiled quota.
#[derive(Debug)]
pub struct Quota {
    /// `per_user`, as configured.
    pub name: String,
    /// The metric label: `API NAME`, or `NAME` for a top-level quota.
    pub label: String,
    pub key: QuotaKey,
    pub limit: u64,
    pub window_seconds: u64,
    /// Only these count (empty: every method; GET also covers HEAD).
    pub methods: Vec<Method>,
    /// `RateLimit-Policy: "per_user";q=600;w=60`, built once.
    pub policy: HeaderValue,
    /// `"per_user";r=`: the start of its `RateLimit` field, built once.
    rate_limit_prefix: Box<[u8]>,
    /// Who it is across reloads: its label and window (a new window starts new counts).
    pub id: u64,
    /// The key prefix of its counters in the shared store.
    pub store_id: String,
    /// A claim key's place in the verifier's kept claims (`Principal::callers`), set at load.
    pub claim_slot: Option<usize>,
}

/// What names the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuotaKey {
    /// A claim whose string or number value names the caller.
    Claim(String),
    /// The address scopegate believes.
    ClientIp,
}

impl Quota {
    pub fn new(
        name: &str,
        label: String,
        key: QuotaKey,
        limit: u64,
        window_seconds: u64,
        methods: Vec<Method>,
    ) -> Result<Quota, String> {
        let policy = format!("{};q={limit};w={window_seconds}", sf_string(name));
        let policy = HeaderValue::from_str(&policy)
            .map_err(|_| format!("quota name {name:?} does not fit in a header"))?;
        let rate_limit_prefix = format!("{};r=", sf_string(name)).into_bytes().into();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&label, window_seconds).hash(&mut h);
        let digest = aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            format!("{label}\n{window_seconds}").as_bytes(),
        );
        let store_id: String = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Quota {
            name: name.to_string(),
            label,
            key,
            limit,
            window_seconds,
            methods,
            policy,
            rate_limit_prefix,
            id: h.finish(),
            store_id,
            claim_slot: None,
        })
    }

    fn width_ms(&self) -> u64 {
        self.window_seconds * 1000 / SUB_BUCKETS
    }

    /// Whether a request with this method counts.
    pub fn counts(&self, method: &Method) -> bool {
        self.methods.is_empty()
            || self.methods.contains(method)
            || (*method == Method::HEAD && self.methods.contains(&Method::GET))
    }

    /// `RateLimit: "per_user";r=0;t=12` (on every allowed response: the quoted name is
    /// written once, at load, and only the numbers here).
    pub fn rate_limit(&self, remaining: u64, reset_seconds: u64) -> Option<HeaderValue> {
        let mut numbers = (itoa::Buffer::new(), itoa::Buffer::new());
        let (r, t) = (numbers.0.format(remaining), numbers.1.format(reset_seconds));
        let mut field = Vec::with_capacity(self.rate_limit_prefix.len() + r.len() + t.len() + 3);
        field.extend_from_slice(&self.rate_limit_prefix);
        field.extend_from_slice(r.as_bytes());
        field.extend_from_slice(b";t=");
        field.extend_from_slice(t.as_bytes());
        HeaderValue::from_maybe_shared(bytes::Bytes::from(field)).ok()
    }

    /// `600 per 60 s by sub (POST, PUT)`, for `check` and `explain`.
    pub fn describe(&self) -> String {
        let by = match &self.key {
            QuotaKey::Claim(c) => c.as_str(),
            QuotaKey::ClientIp => "client_ip",
        };
        let methods = if self.methods.is_empty() {
            String::new()
        } else {
            let m: Vec<&str> = self.methods.iter().map(Method::as_str).collect();
            format!(", {} only", m.join(","))
        };
        format!(
            "{} {} per {} s by {by}{methods}",
            self.label, self.limit, self.window_seconds
        )
    }
}

/// An RFC 8941 sf-string: quoted, `"` and `\` escaped.
fn sf_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The caller a claim value names, as text: a string as it is, a number as JSON writes it
/// (`"42"` and `42` are one caller); `None` for a value that names none (the request is then
/// counted by address). The one rule for both keys of a caller's counts: `claim_caller` here,
/// the store's in `Requester::text`.
fn claim_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

/// The caller a claim value names (`claim_text`), as a seeded hash. Made at verification
/// (`Principal::callers`), once per token.
pub fn claim_caller(value: &Value) -> Option<u64> {
    static SEED: OnceLock<ahash::RandomState> = OnceLock::new();
    let seed = SEED.get_or_init(ahash::RandomState::new);
    claim_text(value).map(|text| seed.hash_one(text.as_ref()))
}

/// Who is calling, as the quotas of a request see it.
#[derive(Clone, Copy, Default)]
pub struct Requester<'a> {
    /// The verified token's kept claims (none for a public route).
    pub claims: &'a [(Box<str>, Value)],
    /// Its `Principal::callers`.
    pub callers: &'a [Option<u64>],
    /// The address scopegate believes.
    pub ip: Option<IpAddr>,
}

/// A request's caller under one quota, as its counts are keyed in this process.
#[derive(Hash)]
enum CallerId {
    Claim(u64),
    Ip(Option<IpAddr>),
}

impl Requester<'_> {
    fn id(&self, quota: &Quota) -> CallerId {
        match quota
            .claim_slot
            .and_then(|i| self.callers.get(i).copied().flatten())
        {
            Some(hash) => CallerId::Claim(hash),
            None => CallerId::Ip(self.ip),
        }
    }

    /// The caller by its text, the same on every replica (what the store's key is made of):
    /// `c:` and the claim, or `ip:` and the address.
    fn text(&self, quota: &Quota) -> String {
        let claim = match &quota.key {
            QuotaKey::Claim(name) => self
                .claims
                .iter()
                .find(|(n, _)| **n == **name)
                .and_then(|(_, v)| claim_text(v)),
            QuotaKey::ClientIp => None,
        };
        match (claim, self.ip) {
            (Some(c), _) => format!("c:{c}"),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "ip:".to_string(),
        }
    }
}

/// Where a request stands under the quotas of its route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed; the quota (index into the snapshot's) with the smallest remaining fraction.
    Allowed(Option<Standing>),
    /// Over quota `quota`: one more request fits in `retry_after` seconds.
    Exceeded { quota: usize, retry_after: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Standing {
    pub quota: usize,
    pub remaining: u64,
    /// Seconds until a counted request leaves the window.
    pub reset: u64,
}

/// The counts of a process, kept across reloads (a quota is known by its label and window).
pub struct Quotas {
    local: Counters<Window>,
    shared: Option<Shared>,
}

struct Shared {
    store: Arc<SharedStore>,
    leases: Arc<Counters<Lease>>,
    /// Rung when a caller's waiting ask (or ask on credit) is over (by the caller's key,
    /// modulo their number): its other requests, waiting for that answer, take again.
    answered: Arc<[Notify]>,
}

/// How many `Shared::answered` there are.
const ANSWERED: usize = 64;

/// The `answered` of the caller with `key`.
fn answered_for(answered: &[Notify], key: u64) -> &Notify {
    &answered[key as usize % ANSWERED]
}

impl Shared {
    fn answered(&self, key: u64) -> &Notify {
        answered_for(&self.answered, key)
    }

    /// Requests a caller may be allowed on credit per sub-bucket under `limit` (see
    /// `shared`): none until this replica knows how many share the store. A limit too small
    /// for any credit does not ask (nor start this replica's beats).
    fn credit(&self, limit: u64) -> u32 {
        if limit < CREDIT_FROM {
            return 0;
        }
        self.store.replicas().map_or(0, |n| credit(limit, n))
    }

    /// Another request of this caller asks the store: wait for its answer (at most the
    /// store's timeout), then take again. The step, and the time it was taken at; `None`
    /// when no answer came in time.
    async fn join(
        &self,
        key: u64,
        (limit, width): (u64, u64),
        credit: impl Fn() -> u32 + Sync,
        now_ms: u64,
    ) -> Option<(Step, u64)> {
        let waited = Instant::now();
        let deadline = tokio::time::Instant::now() + self.store.timeout();
        loop {
            // Listening before looking: an answer between the two is not missed.
            let answered = self.answered(key).notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let now = now_ms + waited.elapsed().as_millis() as u64;
            match self
                .leases
                .with(key, |l| l.take(limit, width, now, &credit))
            {
                Step::Join => {}
                step => return Some((step, now)),
            }
            tokio::time::timeout_at(deadline, answered).await.ok()?;
        }
    }
}

/// The waiting ask of a caller, while it lasts: once over (answered, failed, or its request
/// gone), the caller's next request may ask, and those waiting for it take again.
struct Asking<'a> {
    shared: &'a Shared,
    key: u64,
    /// Not answered yet: when dropped so, the lease is told the ask is over (an answer tells
    /// it as it is installed, and a request that asks after that must keep its own mark).
    open: bool,
}

impl Asking<'_> {
    /// The answer is installed: wake those waiting for it.
    fn answered(mut self) {
        self.open = false;
    }
}

impl Drop for Asking<'_> {
    fn drop(&mut self) {
        if self.open {
            self.shared
                .leases
                .with_existing(self.key, |l| l.ask_over(Asked::Waiting));
        }
        self.shared.answered(self.key).notify_waiters();
    }
}

/// A request counted under one quota, to take back if another refuses it.
enum Counted {
    Local(u64, u64),
    Leased(u64, u64),
}

impl Quotas {
    /// In-process counting, shared through `store` when there is one.
    pub fn new(store: Option<Arc<SharedStore>>) -> Quotas {
        Quotas {
            local: Counters::new(),
            shared: store.map(|store| Shared {
                store,
                leases: Arc::new(Counters::new()),
                answered: (0..ANSWERED)
                    .map(|_| Notify::new())
                    .collect::<Vec<_>>()
                    .into(),
            }),
        }
    }

    /// Step 7b: count a request under `route_quotas` (indices into `quotas`) at `now_ms`. A
    /// request refused by one quota is taken back from the others (it spends nothing).
    pub async fn check(
        &self,
        quotas: &[Quota],
        route_quotas: &[usize],
        method: &Method,
        who: &Requester<'_>,
        now_ms: u64,
    ) -> Verdict {
        // Only a route under several quotas may have to take a request back (no allocation
        // for the usual one quota).
        let several = route_quotas.len() > 1;
        let mut counted: Vec<Counted> = Vec::new();
        let mut best: Option<Standing> = None;
        for &q in route_quotas {
            let quota = &quotas[q];
            if !quota.counts(method) {
                continue;
            }
            let id = who.id(quota);
            let outcome = match &self.shared {
                Some(shared) => self.shared_take(shared, quota, &id, who, now_ms).await,
                None => self.local_take(quota, &id, now_ms),
            };
            match outcome {
                Ok((c, remaining, reset_ms)) => {
                    if several {
                        counted.push(c);
                    }
                    let standing = Standing {
                        quota: q,
                        remaining,
                        reset: reset_ms.div_ceil(1000).max(1),
                    };
                    // The smallest remaining fraction: r1/q1 < r2/q2.
                    let smaller = best.is_none_or(|b| {
                        (remaining as u128) * (quotas[b.quota].limit as u128)
                            < (b.remaining as u128) * (quota.limit as u128)
                    });
                    if smaller {
                        best = Some(standing);
                    }
                }
                Err(retry_ms) => {
                    for c in counted {
                        self.undo(c);
                    }
                    return Verdict::Exceeded {
                        quota: q,
                        retry_after: retry_ms.div_ceil(1000).max(1),
                    };
                }
            }
        }
        Verdict::Allowed(best)
    }

    fn local_take(
        &self,
        quota: &Quota,
        id: &CallerId,
        now_ms: u64,
    ) -> Result<(Counted, u64, u64), u64> {
        let key = self.local.key(quota.id, id);
        match self
            .local
            .with(key, |w| w.take(quota.limit, quota.width_ms(), now_ms))
        {
            Take::Allowed {
                bucket,
                remaining,
                reset_ms,
            } => Ok((Counted::Local(key, bucket), remaining, reset_ms)),
            Take::Refused { retry_ms } => Err(retry_ms),
        }
    }

    async fn shared_take(
        &self,
        shared: &Shared,
        quota: &Quota,
        id: &CallerId,
        who: &Requester<'_>,
        now_ms: u64,
    ) -> Result<(Counted, u64, u64), u64> {
        let key = shared.leases.key(quota.id, id);
        let (limit, width) = (quota.limit, quota.width_ms());
        // Asked only for a request no lease serves.
        let credit = || shared.credit(limit);
        let mut step = shared
            .leases
            .with(key, |l| l.take(limit, width, now_ms, credit));
        let mut now_ms = now_ms;
        if step == Step::Join {
            match shared.join(key, (limit, width), credit, now_ms).await {
                Some((then, at)) => (step, now_ms) = (then, at),
                // The ask it waited for came too late: counted as it falls back.
                None => {
                    shared.store.skipped("quota");
                    return self.local_take(quota, id, now_ms);
                }
            }
        }
        let step = match step {
            Step::Ask {
                want,
                give_back,
                report,
            } => {
                let asking = Asking {
                    shared,
                    key,
                    open: true,
                };
                if !shared.store.usable() {
                    shared.store.skipped("quota");
                    return self.local_take(quota, id, now_ms);
                }
                let prefix = store_key(quota, who);
                let ask = LeaseAsk {
                    limit,
                    width_ms: width,
                    want,
                    give_back,
                    next: false,
                    report,
                };
                let Some(grant) = shared.store.quota_take(prefix.clone(), ask).await else {
                    return self.local_take(quota, id, now_ms);
                };
                let times = (now_ms, monotonic_ms(Instant::now()));
                let (step, back) = shared.leases.with(key, |l| {
                    l.install(grant, limit, width, times, Asked::Waiting)
                });
                asking.answered();
                give_all_back(&shared.store, &prefix, back);
                step.unwrap_or(Step::Refused { retry_ms: 1000 })
            }
            step => step,
        };
        match step {
            Step::Allowed {
                bucket,
                remaining,
                reset_ms,
                refill,
            } => {
                if let Some(refill) = refill {
                    self.refill(shared, quota, who, key, refill, now_ms);
                }
                Ok((Counted::Leased(key, bucket), remaining, reset_ms))
            }
            Step::Refused { retry_ms } => Err(retry_ms),
            Step::Ask { .. } | Step::Join => Err(1000),
        }
    }

    /// Top up a lease, take the next bucket's, or take one for a request allowed on credit,
    /// in the background.
    fn refill(
        &self,
        shared: &Shared,
        quota: &Quota,
        who: &Requester<'_>,
        key: u64,
        refill: Refill,
        now_ms: u64,
    ) {
        let (store, leases, answered) = (
            shared.store.clone(),
            shared.leases.clone(),
            shared.answered.clone(),
        );
        let asked = refill.kind;
        // Those waiting for an ask on credit take again once it is over.
        let wake = move || {
            if asked == Asked::Credit {
                answered_for(&answered, key).notify_waiters();
            }
        };
        if !store.usable() {
            leases.with(key, |l| l.ask_over(asked));
            wake();
            return;
        }
        let (prefix, limit, width) = (store_key(quota, who), quota.limit, quota.width_ms());
        let ask = LeaseAsk {
            limit,
            width_ms: width,
            want: refill.want,
            give_back: refill.give_back,
            next: asked == Asked::Next,
            report: refill.report,
        };
        let (store_then, prefix_then) = (store.clone(), prefix.clone());
        // On the store's thread, when it answers.
        let then = Box::new(move |grant: Option<Grant>| {
            match grant {
                Some(g) => {
                    let times = (now_ms, monotonic_ms(Instant::now()));
                    let (_, back) = leases.with(key, |l| l.install(g, limit, width, times, asked));
                    give_all_back(&store_then, &prefix_then, back);
                }
                // What it carried back was not handed back (nor its report counted): the
                // store keeps counting it until its bucket leaves the window (early refusals,
                // never more allowed).
                None => {
                    leases.with_existing(key, |l| l.ask_over(asked));
                }
            }
            wake();
        });
        store.quota_take_then(prefix, ask, then);
    }

    fn undo(&self, counted: Counted) {
        match counted {
            Counted::Local(key, bucket) => {
                self.local.with_existing(key, |w| w.undo(bucket));
            }
            Counted::Leased(key, bucket) => {
                if let Some(shared) = &self.shared {
                    shared.leases.with_existing(key, |l| l.undo(bucket));
                }
            }
        }
    }
}

/// Hand back what `install` found unused (not awaited).
fn give_all_back(store: &SharedStore, prefix: &str, back: GiveBacks) {
    for (bucket, n) in back.into_iter().flatten() {
        store.quota_give_back(prefix.to_string(), bucket, n);
    }
}

/// Milliseconds on the monotonic clock quotas count with (from the first call).
pub fn monotonic_ms(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    at.saturating_duration_since(*EPOCH.get_or_init(Instant::now))
        .as_millis() as u64
}

/// `scopegate:q:{ID}:` : the caller's counters in the store (one per sub-bucket follows), a
/// hash of the quota and the caller (no claim value in the store), in one hash slot.
fn store_key(quota: &Quota, who: &Requester<'_>) -> String {
    let text = who.text(quota);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    let caller: String = digest.as_ref()[..12]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("scopegate:q:{{{}{caller}}}:", quota.store_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A quota of a config whose only kept claim is `sub`.
    fn quota(name: &str, key: QuotaKey, limit: u64, methods: Vec<Method>) -> Quota {
        let mut q = Quota::new(name, format!("api {name}"), key, limit, 1, methods).unwrap();
        q.claim_slot = matches!(q.key, QuotaKey::Claim(_)).then_some(0);
        q
    }

    /// A verified token's kept claims (`sub`, or none) and their callers, as the verifier
    /// makes them.
    struct Token(Vec<(Box<str>, Value)>, Vec<Option<u64>>);

    impl Token {
        fn who(&self, ip: Option<IpAddr>) -> Requester<'_> {
            Requester {
                claims: &self.0,
                callers: &self.1,
                ip,
            }
        }
    }

    fn claims(sub: Value) -> Token {
        let caller = claim_caller(&sub);
        Token(vec![(Box::from("sub"), sub)], vec![caller])
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn callers_are_counted_apart_and_claim_values_compare_as_text() {
        let quotas = vec![quota("per_user", QuotaKey::Claim("sub".into()), 2, vec![])];
        let q = Quotas::new(None);
        let get = Method::GET;
        let (a, a_num, b) = (claims("42".into()), claims(42.into()), claims("7".into()));
        let check = |c: &Token, t| block(q.check(&quotas, &[0], &get, &c.who(None), t));
        assert!(matches!(
            check(&a, 0),
            Verdict::Allowed(Some(Standing { remaining: 1, .. }))
        ));
        assert!(matches!(
            check(&a_num, 0),
            Verdict::Allowed(Some(Standing { remaining: 0, .. }))
        ));
        assert_eq!(
            check(&a, 10),
            Verdict::Exceeded {
                quota: 0,
                retry_after: 2
            }
        );
        assert!(matches!(check(&b, 10), Verdict::Allowed(_)));
        // A token without the claim is counted by address.
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let none = Token(Vec::new(), vec![None]);
        let by_ip = |t| block(q.check(&quotas, &[0], &get, &none.who(Some(ip)), t));
        assert!(matches!(by_ip(0), Verdict::Allowed(_)));
        assert!(matches!(by_ip(0), Verdict::Allowed(_)));
        assert!(matches!(by_ip(0), Verdict::Exceeded { .. }));
        // The window recovers (the sub-bucket of t=0 leaves at 1_100 ms).
        assert!(matches!(check(&a, 1_099), Verdict::Exceeded { .. }));
        assert!(matches!(check(&a, 1_100), Verdict::Allowed(_)));
    }

    #[test]
    fn a_request_one_quota_refuses_spends_nothing_of_the_others_and_methods_filter() {
        let quotas = vec![
            quota(
                "writes",
                QuotaKey::Claim("sub".into()),
                10,
                vec![Method::POST],
            ),
            quota("per_ip", QuotaKey::ClientIp, 1, vec![]),
            quota("reads", QuotaKey::ClientIp, 5, vec![Method::GET]),
        ];
        let q = Quotas::new(None);
        let c = claims("u".into());
        let check = |m: &Method| block(q.check(&quotas, &[0, 1], m, &c.who(None), 0));
        match check(&Method::POST) {
            Verdict::Allowed(Some(s)) => {
                assert_eq!(s.quota, 1, "0 of 1 left is the smallest fraction")
            }
            v => panic!("{v:?}"),
        }
        assert_eq!(
            check(&Method::POST),
            Verdict::Exceeded {
                quota: 1,
                retry_after: 2
            }
        );
        assert_eq!(
            check(&Method::POST),
            Verdict::Exceeded {
                quota: 1,
                retry_after: 2
            }
        );
        // `writes` counted only the allowed POST: 9 left.
        let only_writes = block(q.check(&quotas, &[0], &Method::POST, &c.who(None), 0));
        assert!(matches!(
            only_writes,
            Verdict::Allowed(Some(Standing { remaining: 8, .. }))
        ));
        // GET does not count under `writes`; HEAD counts as GET under `reads`.
        assert_eq!(
            block(q.check(&quotas, &[0], &Method::GET, &c.who(None), 0)),
            Verdict::Allowed(None)
        );
        let head = block(q.check(&quotas, &[2], &Method::HEAD, &Requester::default(), 0));
        assert!(matches!(
            head,
            Verdict::Allowed(Some(Standing { remaining: 4, .. }))
        ));
    }

    /// Both keys of a caller's counts, the in-process hash and the store's text, come from one
    /// reading of the claim: two values are one caller in both or in neither. The text is what
    /// every replica (of every release) makes the store's key of.
    #[test]
    fn a_claim_names_one_caller_in_process_and_in_the_store() {
        let q = quota("per_user", QuotaKey::Claim("sub".into()), 5, vec![]);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let values = [
            json!("42"),
            json!(42),
            json!(42.0),
            json!(""),
            json!(true),
            json!("true"),
            json!(null),
            json!(["42"]),
            json!({ "a": 1 }),
        ];
        let tokens: Vec<Token> = values.iter().map(|v| claims(v.clone())).collect();
        let counters: Counters<Window> = Counters::new();
        for a in &tokens {
            for b in &tokens {
                let (a, b) = (a.who(Some(ip)), b.who(Some(ip)));
                let same_here = counters.key(q.id, &a.id(&q)) == counters.key(q.id, &b.id(&q));
                assert_eq!(
                    same_here,
                    a.text(&q) == b.text(&q),
                    "{:?} {:?}",
                    a.claims,
                    b.claims
                );
            }
        }
        assert_eq!(tokens[0].who(Some(ip)).text(&q), "c:42");
        assert_eq!(tokens[1].who(Some(ip)).text(&q), "c:42");
        assert_eq!(tokens[2].who(Some(ip)).text(&q), "c:42.0");
        assert_eq!(tokens[4].who(Some(ip)).text(&q), "ip:10.0.0.1");
        assert_eq!(Requester::default().text(&q), "ip:");
    }

    #[test]
    fn headers_are_written_as_the_ratelimit_draft_spells_them() {
        let q = Quota::new(
            "per_user",
            "per_user".into(),
            QuotaKey::ClientIp,
            600,
            60,
            vec![],
        )
        .unwrap();
        assert_eq!(q.policy, "\"per_user\";q=600;w=60");
        assert_eq!(q.rate_limit(0, 12).unwrap(), "\"per_user\";r=0;t=12");
        let odd = Quota::new(r#"a"b\c"#, "x".into(), QuotaKey::ClientIp, 1, 1, vec![]).unwrap();
        assert_eq!(
            odd.rate_limit(u64::MAX, 1_000).unwrap(),
            r#""a\"b\\c";r=18446744073709551615;t=1000"#
        );
    }
}

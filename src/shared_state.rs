//! `[shared_state]`: the Redis/Valkey store every replica shares (quotas now, DPoP replay
//! detection and nonces later). `SharedStateSettings` is what a snapshot keeps of the section;
//! `SharedStore` talks to the store from a thread of its own, so no worker thread ever does
//! Redis I/O: a request hands an operation over a bounded channel and waits for the answer at
//! most `timeout_ms`. A failed or late operation is counted (`on_error(op)`), logged once per
//! outage, and its caller falls back (quotas: in-process counting); it never fails a request.
//! While the store is down no request waits on it: one probe a second, off the request path,
//! finds it again. Quota operations that arrive together go to the store as one pipeline;
//! background ones (lease top-ups, leases taken ahead) are answered on the store's thread and
//! wake no worker. While busy the thread looks for operations every millisecond rather than
//! being woken for each; one a request waits on wakes it at once.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Notify};

/// What a snapshot keeps of `[shared_state]`.
#[derive(Clone)]
pub struct SharedStateSettings {
    pub url: String,
    /// The variable named by `secret_env` (for the DPoP nonces).
    pub secret_env: Option<String>,
    /// Its value, read at load.
    pub secret: Option<Vec<u8>>,
    /// Per operation.
    pub timeout: Duration,
}

impl std::fmt::Debug for SharedStateSettings {
    // The secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStateSettings")
            .field("url", &self.url)
            .field("secret_env", &self.secret_env)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Operations queued at most; past it an operation fails at once (and its caller falls back).
const QUEUE: usize = 4096;
/// Background asks on their way at most; past it one is not made (its lease is asked for
/// later, or by a request that waits): a burst of callers must not queue more than the store
/// answers in time, and a background ask is never one a request falls back for.
const MAX_BACKGROUND: usize = 256;
/// While the store is down, how often a probe looks for it.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A lease of quota from the store (see `quota::shared` for the scheme).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Requests granted in `bucket` (0: the quota is used up there).
    pub granted: u32,
    /// The sub-bucket, on the store's clock.
    pub bucket: u64,
    /// Milliseconds left in the store's current sub-bucket when it answered: for a lease of
    /// the next one, how long until it starts.
    pub ms_left: u64,
    /// Milliseconds until the count over the window drops: below the limit when it is used up
    /// (the `Retry-After`), else the next time a counted request leaves the window.
    pub free_in_ms: u64,
    /// Requests counted over the window, this grant included.
    pub counted: u64,
}

/// A lease asked of the store for one caller under one quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseAsk {
    pub limit: u64,
    pub width_ms: u64,
    pub want: u32,
    /// The unused rest of an ended lease, handed back first: its bucket and how many.
    pub give_back: Option<(u64, u32)>,
    /// For the next sub-bucket, ahead of it (else for the current one).
    pub next: bool,
    /// Requests allowed on credit, counted into the current sub-bucket first.
    pub report: u32,
}

/// What a background ask does with the store's answer (`None`: it did not come), on the
/// store's thread.
pub type Then = Box<dyn FnOnce(Option<Grant>) + Send>;

/// A background ask on its way: answered once, and `None` if it is dropped unanswered (its
/// task gone), so the lease that asked is never left waiting for it.
struct Pending {
    then: Option<Then>,
    health: Arc<Health>,
}

impl Pending {
    fn answer(mut self, grant: Option<Grant>) {
        self.give(grant);
    }

    fn give(&mut self, grant: Option<Grant>) {
        if let Some(then) = self.then.take() {
            self.health.background.fetch_sub(1, Ordering::Relaxed);
            then(grant);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.give(None);
    }
}

enum Job {
    QuotaTake {
        key: String,
        ask: LeaseAsk,
        reply: oneshot::Sender<redis::RedisResult<Grant>>,
    },
    /// A background ask: nobody waits, the answer goes to `then`.
    QuotaTakeThen {
        key: String,
        ask: LeaseAsk,
        then: Pending,
    },
    QuotaGiveBack {
        key: String,
        bucket: u64,
        count: u32,
    },
    /// Record a DPoP proof's key unless it is there: `true` when it was not.
    Replay {
        key: String,
        ttl: u64,
        reply: oneshot::Sender<redis::RedisResult<bool>>,
    },
    Probe,
}

/// Counts one sub-bucket's lease atomically on the store's clock (`TIME`): first hands back
/// the unused rest of an ended lease (never below zero), then grants `min(want, limit - sum)`
/// into the current sub-bucket `i` or, asked ahead, into the next one, adds it to that
/// bucket's counter, and says how long until the count drops. For bucket `i` the sum is over
/// `i-B..=i+1` (leases taken ahead for `i+1` count too), for `i+1` over `i+1-B..=i+1`: each
/// grant sees every count that shares a window with it, so the leases of no window of B+1
/// buckets ever hold more than the limit. KEYS[1] is the caller's key prefix; ARGV: limit,
/// width in ms, B (sub-buckets per window), want, the handed-back lease's bucket and count
/// (0 0: none), 1 to ask for the next bucket, and the requests allowed on credit, counted into
/// bucket `i` first (in the sums from then on; never refused: they were allowed). Answers the
/// grant, its bucket, the ms until bucket `i` ends (when `i+1` starts), the ms until the count
/// drops, and the sum.
const TAKE: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local back = tonumber(ARGV[6])
if back > 0 then
  local old = KEYS[1] .. ARGV[5]
  local d = math.min(tonumber(redis.call('GET', old) or '0'), back)
  if d > 0 then redis.call('DECRBY', old, d) end
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, w, b, want = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local i = math.floor(now / w)
local report = tonumber(ARGV[8])
if report > 0 then
  redis.call('INCRBY', KEYS[1] .. i, report)
  redis.call('PEXPIRE', KEYS[1] .. i, w * (b + 2))
end
local target = i + tonumber(ARGV[7])
local first = target - b
local keys = {}
for j = first, i + 1 do keys[#keys + 1] = KEYS[1] .. j end
local at = target - first + 1
local vals = redis.call('MGET', unpack(keys))
local counts, sum = {}, 0
for k = 1, #vals do counts[k] = tonumber(vals[k]) or 0; sum = sum + counts[k] end
local grant = math.min(want, math.max(limit - sum, 0))
if grant > 0 then
  redis.call('INCRBY', keys[at], grant)
  redis.call('PEXPIRE', keys[at], w * (b + 2))
  counts[at] = counts[at] + grant
  sum = sum + grant
end
local free, s = 0, sum
for k = 1, #counts do
  s = s - counts[k]
  if (sum >= limit and s < limit) or (sum < limit and counts[k] > 0) then
    free = (first + k + b) * w - now
    break
  end
end
return {grant, target, (i + 1) * w - now, free, sum}
"#;

/// Hands back what a lease did not use once its sub-bucket is over, never below zero.
const GIVE_BACK: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
local d = math.min(v, tonumber(ARGV[1]))
if d > 0 then redis.call('DECRBY', KEYS[1], d) end
return d
"#;

/// Sub-buckets per window, as in `quota::window`.
pub const SUB_BUCKETS: u64 = 10;

/// How often a replica tells the store it is there (for quota credit, `quota::shared`).
const BEAT: Duration = Duration::from_secs(1);
/// The replicas sharing the store: a sorted set of ids, scored by the store's clock (ms).
const REPLICAS: &str = "scopegate:replicas";
/// A replica not heard from for this long has left the set.
const GONE_AFTER_MS: u64 = 5_000;

/// How many replicas share the store, as this one last heard, and whether every other has
/// counted this one by now.
struct Replicas {
    /// Asked for by a quota that could spend credit: beats start then.
    wanted: AtomicBool,
    start: Notify,
    count: AtomicU64,
    /// The first answer (ms since `Health::epoch`) of the beats answered without a break
    /// since (`u64::MAX`: none).
    since_ms: AtomicU64,
    /// When the last answered beat was sent.
    sent_ms: AtomicU64,
    /// Told the count each beat (0 while credit may not be spent).
    on_count: Box<dyn Fn(u64) + Send + Sync>,
}

impl Replicas {
    /// The count, when credit may be spent at `now_ms`: every other replica beats every
    /// second, so one that has beaten for 3 s without a break is counted by each other's last
    /// beat (sent less than 2 s ago, or that one spends no credit); and after 2 s without a
    /// beat answered, its id may soon leave the set (at 5 s), so it stops.
    fn count_at(&self, now_ms: u64) -> Option<u64> {
        let beat = BEAT.as_millis() as u64;
        let since = self.since_ms.load(Ordering::Relaxed);
        let sent = self.sent_ms.load(Ordering::Relaxed);
        (since != u64::MAX && now_ms >= since + 3 * beat && now_ms < sent + 2 * beat)
            .then(|| self.count.load(Ordering::Relaxed))
    }
}

struct Health {
    up: AtomicBool,
    /// Background asks on their way.
    background: AtomicUsize,
    /// While down: when (ms since `epoch`) the next probe may go.
    probe_at_ms: AtomicU64,
    epoch: Instant,
    on_error: Box<dyn Fn(&'static str) + Send + Sync>,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn failed(&self, op: &'static str, why: &str) {
        (self.on_error)(op);
        self.down(why);
    }

    fn down(&self, why: &str) {
        self.probe_at_ms.store(
            self.now_ms() + PROBE_EVERY.as_millis() as u64,
            Ordering::Relaxed,
        );
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                "shared state unreachable: until it is back, quotas are counted in-process and requests with DPoP proofs are refused (503)"
            );
        }
    }

    fn reached(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            tracing::info!(
                "shared state reachable again: quotas are shared and DPoP replay is checked again"
            );
        }
    }
}

/// The client of the shared store; cheap to share (`Arc` it).
pub struct SharedStore {
    jobs: mpsc::Sender<Job>,
    replicas: Arc<Replicas>,
    /// Wakes the store's thread at once for an operation a request waits on.
    urgent: Arc<Notify>,
    timeout: Duration,
    health: Arc<Health>,
}

impl SharedStore {
    /// Start the store's thread; it connects on first use and reconnects on its own.
    /// `on_error(op)` counts each failed operation; `on_replicas(n)` is told how many replicas
    /// share the store (0 while this one spends no quota credit), each second once quotas ask.
    pub fn start(
        settings: &SharedStateSettings,
        on_error: Box<dyn Fn(&'static str) + Send + Sync>,
        on_replicas: Box<dyn Fn(u64) + Send + Sync>,
    ) -> std::io::Result<SharedStore> {
        let (jobs, rx) = mpsc::channel(QUEUE);
        let health = Arc::new(Health {
            up: AtomicBool::new(true),
            background: AtomicUsize::new(0),
            probe_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            on_error,
        });
        let replicas = Arc::new(Replicas {
            wanted: AtomicBool::new(false),
            start: Notify::new(),
            count: AtomicU64::new(0),
            since_ms: AtomicU64::new(u64::MAX),
            sent_ms: AtomicU64::new(0),
            on_count: on_replicas,
        });
        let (url, timeout, h) = (settings.url.clone(), settings.timeout, health.clone());
        let urgent = Arc::new(Notify::new());
        let (woken, r) = (urgent.clone(), replicas.clone());
        std::thread::Builder::new()
            .name("shared-state".into())
            .spawn(move || serve(url, timeout, (rx, woken), h, r))?;
        Ok(SharedStore {
            jobs,
            replicas,
            urgent,
            timeout: settings.timeout,
            health,
        })
    }

    /// An operation not tried because the store is unreachable (its request falls back):
    /// counted as a failed `op`, like one tried that failed.
    pub fn skipped(&self, op: &'static str) {
        (self.health.on_error)(op);
    }

    /// How many replicas share the store (this one included), once every other one counts
    /// this one too; `None` until then, and while the store is not heard (no quota credit).
    /// The first call starts this replica's beats.
    pub fn replicas(&self) -> Option<u64> {
        let r = &self.replicas;
        if !r.wanted.load(Ordering::Relaxed) && !r.wanted.swap(true, Ordering::Relaxed) {
            r.start.notify_one();
        }
        r.count_at(self.health.now_ms())
    }

    /// How long an operation may take (`timeout_ms`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether to ask the store now. While it is down: no, and at most once a second a probe
    /// (not awaited) looks whether it is back.
    pub fn usable(&self) -> bool {
        if self.health.up.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.health.now_ms();
        let at = self.health.probe_at_ms.load(Ordering::Relaxed);
        if now >= at
            && self
                .health
                .probe_at_ms
                .compare_exchange(
                    at,
                    now + PROBE_EVERY.as_millis() as u64,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            let _ = self.jobs.try_send(Job::Probe);
        }
        false
    }

    /// Take a lease of up to `want` requests of a quota for the caller whose keys start with
    /// `key` (see `quota::shared`). `None` when the store did not answer within the timeout
    /// (counted as a failed `quota` operation).
    pub async fn quota_take(&self, key: String, ask: LeaseAsk) -> Option<Grant> {
        let (reply, answer) = oneshot::channel();
        let job = Job::QuotaTake { key, ask, reply };
        self.ask("quota", job, answer).await
    }

    /// Take a lease in the background: `then` gets the answer on the store's thread, and no
    /// task, timer or wake-up of the caller's is involved. A failure is counted as a failed
    /// `quota` operation and answered `None`; so is, without being counted, an ask past
    /// `MAX_BACKGROUND` on their way, and one whose job is dropped unanswered.
    pub fn quota_take_then(&self, key: String, ask: LeaseAsk, then: Then) {
        // Counted on its way from here; a `Pending` dropped unsent answers `None`.
        let on_their_way = self.health.background.fetch_add(1, Ordering::Relaxed);
        let then = Pending {
            then: Some(then),
            health: self.health.clone(),
        };
        if on_their_way >= MAX_BACKGROUND {
            return;
        }
        if self
            .jobs
            .try_send(Job::QuotaTakeThen { key, ask, then })
            .is_err()
        {
            self.health.failed("quota", "too many operations queued");
        }
    }

    /// Send `job` and wait for its answer at most the timeout; a failure is counted under `op`.
    async fn ask<T>(
        &self,
        op: &'static str,
        job: Job,
        answer: oneshot::Receiver<redis::RedisResult<T>>,
    ) -> Option<T> {
        if self.jobs.try_send(job).is_err() {
            self.health.failed(op, "too many operations queued");
            return None;
        }
        self.urgent.notify_one();
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(Ok(value))) => {
                self.health.reached();
                Some(value)
            }
            Ok(Ok(Err(e))) => {
                self.health.failed(op, &e.to_string());
                None
            }
            Ok(Err(_)) => {
                self.health.failed(op, "the store's thread is gone");
                None
            }
            Err(_) => {
                self.health.failed(op, "timed out");
                None
            }
        }
    }

    /// Record the DPoP proof `key` for `ttl` seconds: `Some(true)` when it was new, `Some(false)`
    /// when it was recorded before (a replay), `None` when the store did not answer in time
    /// (counted as a failed `replay` operation).
    pub async fn replay_insert(&self, key: String, ttl: u64) -> Option<bool> {
        let (reply, answer) = oneshot::channel();
        self.ask("replay", Job::Replay { key, ttl, reply }, answer)
            .await
    }

    /// Hand back `count` unused requests of a lease for `bucket` (not awaited).
    pub fn quota_give_back(&self, key: String, bucket: u64, count: u32) {
        let _ = self
            .jobs
            .try_send(Job::QuotaGiveBack { key, bucket, count });
    }
}

/// The store's thread: one current-thread runtime and a connection manager that reconnects.
fn serve(
    url: String,
    timeout: Duration,
    jobs: (mpsc::Receiver<Job>, Arc<Notify>),
    health: Arc<Health>,
    replicas: Arc<Replicas>,
) {
    // rediss:// needs a process-wide rustls provider; an error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "shared state: no runtime; quotas stay in-process");
            return;
        }
    };
    runtime.block_on(async move {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(PROBE_EVERY);
        let manager = redis::Client::open(url.as_str())
            .and_then(|c| redis::aio::ConnectionManager::new_lazy_with_config(c, config));
        let manager = match manager {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "shared state: cannot use the URL; quotas stay in-process");
                health.down(&e.to_string());
                return;
            }
        };
        tokio::spawn(beat(manager.clone(), replicas, health.clone()));
        serve_jobs(manager, jobs, health).await;
    });
}

/// Once quotas ask for it: every second, add this replica's id to the set with the store's
/// time, drop the ids not heard from for `GONE_AFTER_MS`, and count the rest.
async fn beat(
    mut con: redis::aio::ConnectionManager,
    replicas: Arc<Replicas>,
    health: Arc<Health>,
) {
    replicas.start.notified().await;
    let mut id = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut id).is_err() {
        return;
    }
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let beat_ms = BEAT.as_millis() as u64;
    let mut every = tokio::time::interval(BEAT);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let sent = health.now_ms();
        let counted = async {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut con).await?;
            let now = secs * 1000 + micros / 1000;
            let (count,): (u64,) = redis::pipe()
                .atomic()
                .zadd(REPLICAS, &id, now)
                .ignore()
                .zrembyscore(REPLICAS, "-inf", now.saturating_sub(GONE_AFTER_MS))
                .ignore()
                .pexpire(REPLICAS, (2 * GONE_AFTER_MS) as i64)
                .ignore()
                .zcard(REPLICAS)
                .query_async(&mut con)
                .await?;
            Ok::<u64, redis::RedisError>(count)
        };
        let count = counted.await;
        let answered = health.now_ms();
        let last = replicas.sent_ms.load(Ordering::Relaxed);
        match count {
            Ok(n) => {
                // A beat slow or late breaks the run: the others may have dropped this id.
                let unbroken = answered < sent + beat_ms && sent < last + 2 * beat_ms;
                if !unbroken || replicas.since_ms.load(Ordering::Relaxed) == u64::MAX {
                    replicas.since_ms.store(answered, Ordering::Relaxed);
                }
                replicas.count.store(n.max(1), Ordering::Relaxed);
                replicas.sent_ms.store(sent, Ordering::Relaxed);
            }
            Err(_) => replicas.since_ms.store(u64::MAX, Ordering::Relaxed),
        }
        (replicas.on_count)(replicas.count_at(answered).unwrap_or(0));
    }
}

/// Hand the queued operations to the store until every sender is gone.
async fn serve_jobs(
    manager: redis::aio::ConnectionManager,
    (mut rx, urgent): (mpsc::Receiver<Job>, Arc<Notify>),
    health: Arc<Health>,
) {
    let scripts = Scripts {
        take: redis::Script::new(TAKE),
        give_back: redis::Script::new(GIVE_BACK),
    };
    // Quota operations that arrive together go to the store as one pipeline (one write, one
    // read); the others each on a task of their own: one slow answer holds up no other.
    let dispatch = |jobs: &mut Vec<Job>| {
        let mut quota = Vec::new();
        for job in jobs.drain(..) {
            match job {
                Job::QuotaTake { .. } | Job::QuotaTakeThen { .. } | Job::QuotaGiveBack { .. } => {
                    quota.push(job)
                }
                job => {
                    tokio::spawn(run(job, manager.clone(), health.clone()));
                }
            }
        }
        while !quota.is_empty() {
            let rest = quota.split_off(quota.len().min(MAX_PIPELINE));
            let batch = std::mem::replace(&mut quota, rest);
            let (con, scripts, health) = (manager.clone(), scripts.clone(), health.clone());
            tokio::spawn(run_quota(batch, con, scripts, health));
        }
    };
    // Idle, the thread sleeps until an operation wakes it. Busy, it looks for operations every
    // millisecond instead: a background ask handed over then wakes nothing (no futex, no
    // context switch on its core), and what arrived together is written to the store
    // together. An operation a request waits on still wakes it at once.
    let mut jobs = Vec::new();
    while let Some(job) = rx.recv().await {
        jobs.push(job);
        let mut quiet = 0;
        while quiet < IDLE_TICKS {
            let open = drain(&mut rx, &mut jobs);
            quiet = if jobs.is_empty() { quiet + 1 } else { 0 };
            dispatch(&mut jobs);
            if !open {
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(TICK) => {}
                _ = urgent.notified() => {}
            }
        }
    }
}

/// Move what is queued into `jobs`; `false` once every sender is gone.
fn drain(rx: &mut mpsc::Receiver<Job>, jobs: &mut Vec<Job>) -> bool {
    loop {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(mpsc::error::TryRecvError::Empty) => return true,
            Err(mpsc::error::TryRecvError::Disconnected) => return false,
        }
    }
}

/// Quota operations in one pipeline at most.
const MAX_PIPELINE: usize = 256;

#[derive(Clone)]
struct Scripts {
    take: redis::Script,
    give_back: redis::Script,
}

impl Scripts {
    /// The `EVALSHA` of a quota operation.
    fn command(&self, job: &Job) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        match job {
            Job::QuotaTake { key, ask, .. } | Job::QuotaTakeThen { key, ask, .. } => {
                let (back_bucket, back) = ask.give_back.unwrap_or((0, 0));
                cmd.arg(self.take.get_hash())
                    .arg(1)
                    .arg(key)
                    .arg(ask.limit)
                    .arg(ask.width_ms)
                    .arg(SUB_BUCKETS)
                    .arg(ask.want)
                    .arg(back_bucket)
                    .arg(back)
                    .arg(u8::from(ask.next))
                    .arg(ask.report);
            }
            Job::QuotaGiveBack { key, bucket, count } => {
                cmd.arg(self.give_back.get_hash())
                    .arg(1)
                    .arg(format!("{key}{bucket}"))
                    .arg(*count);
            }
            Job::Replay { .. } | Job::Probe => {}
        }
        cmd
    }
}

/// Quota operations as one pipeline. A store that does not know a script yet (NOSCRIPT: a
/// new or restarted store) is given both, and the operations it refused for that, and only
/// those, are sent again.
async fn run_quota(
    batch: Vec<Job>,
    mut con: redis::aio::ConnectionManager,
    scripts: Scripts,
    health: Arc<Health>,
) {
    let commands: Vec<redis::Cmd> = batch.iter().map(|job| scripts.command(job)).collect();
    let all: Vec<usize> = (0..batch.len()).collect();
    let mut results = pipeline(&commands, &all, &mut con).await;
    let unknown: Vec<usize> = all
        .into_iter()
        .filter(|&i| {
            matches!(&results[i], Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript))
        })
        .collect();
    if !unknown.is_empty() {
        let loaded = async {
            scripts.take.load_async(&mut con).await?;
            scripts.give_back.load_async(&mut con).await
        };
        let again = match loaded.await {
            Ok(_) => pipeline(&commands, &unknown, &mut con).await,
            Err(e) => unknown.iter().map(|_| Err(copy(&e))).collect(),
        };
        for (&i, r) in unknown.iter().zip(again) {
            results[i] = r;
        }
    }
    for (job, result) in batch.into_iter().zip(results) {
        answer(job, result, &health);
    }
}

/// `commands[i]` for each of `indices` in one pipeline: one answer each, in their order.
async fn pipeline(
    commands: &[redis::Cmd],
    indices: &[usize],
    con: &mut redis::aio::ConnectionManager,
) -> Vec<redis::RedisResult<redis::Value>> {
    let mut pipe = redis::pipe();
    pipe.ignore_errors();
    for &i in indices {
        pipe.add_command(commands[i].clone());
    }
    let mut answers = match pipe
        .query_async::<Vec<redis::RedisResult<redis::Value>>>(con)
        .await
    {
        Ok(answers) => answers,
        Err(e) => indices.iter().map(|_| Err(copy(&e))).collect(),
    };
    // Every operation gets an answer (one the pipeline did not give is a failure).
    answers.truncate(indices.len());
    answers.resize_with(indices.len(), || {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no answer in the pipeline",
        )))
    });
    answers
}

/// An error for each operation a failed pipeline held.
fn copy(e: &redis::RedisError) -> redis::RedisError {
    redis::RedisError::from((e.kind(), "store", e.to_string()))
}

/// Give a quota operation the store's answer.
fn answer(job: Job, result: redis::RedisResult<redis::Value>, health: &Health) {
    let grant = |result: redis::RedisResult<redis::Value>| {
        let (granted, bucket, ms_left, free_in_ms, counted): (u32, u64, u64, u64, u64) =
            redis::from_redis_value(result?)?;
        Ok(Grant {
            granted,
            bucket,
            ms_left,
            free_in_ms,
            counted,
        })
    };
    match job {
        Job::QuotaTake { reply, .. } => {
            let _ = reply.send(grant(result));
        }
        Job::QuotaTakeThen { then, .. } => match grant(result) {
            Ok(grant) => {
                health.reached();
                then.answer(Some(grant));
            }
            Err(e) => {
                health.failed("quota", &e.to_string());
                then.answer(None);
            }
        },
        // A hand-back answers how many it took back; only a failure matters.
        Job::QuotaGiveBack { .. } => {
            if let Err(e) = result {
                health.failed("quota", &e.to_string());
            }
        }
        Job::Replay { .. } | Job::Probe => {}
    }
}

/// While busy, how often the store's thread looks for operations.
const TICK: Duration = Duration::from_millis(1);
/// Ticks without an operation before it sleeps until woken again.
const IDLE_TICKS: u32 = 100;

/// One operation on the store (quotas' go in pipelines: `run_quota`).
async fn run(job: Job, mut con: redis::aio::ConnectionManager, health: Arc<Health>) {
    match job {
        Job::QuotaTake { .. } | Job::QuotaTakeThen { .. } | Job::QuotaGiveBack { .. } => {}
        Job::Replay { key, ttl, reply } => {
            let r: redis::RedisResult<Option<String>> = redis::cmd("SET")
                .arg(format!("scopegate:dpop:{key}"))
                .arg(1)
                .arg("NX")
                .arg("EX")
                .arg(ttl)
                .query_async(&mut con)
                .await;
            let _ = reply.send(r.map(|set| set.is_some()));
        }
        Job::Probe => {
            let r: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut con).await;
            match r {
                Ok(_) => health.reached(),
                Err(e) => health.down(&e.to_string()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_background_ask_dropped_unanswered_answers_none_once() {
        let health = Arc::new(Health {
            up: AtomicBool::new(true),
            background: AtomicUsize::new(1),
            probe_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            on_error: Box::new(|_| {}),
        });
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = answers.clone();
        let pending = Pending {
            then: Some(Box::new(move |g| seen.lock().unwrap().push(g))),
            health: health.clone(),
        };
        drop(pending);
        assert_eq!(*answers.lock().unwrap(), vec![None]);
        assert_eq!(health.background.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_background_ask_past_the_cap_is_not_made_and_counts_no_failure() {
        let failures = Arc::new(AtomicUsize::new(0));
        let counted = failures.clone();
        let settings = SharedStateSettings {
            url: "redis://127.0.0.1:1/0".into(),
            secret_env: None,
            secret: None,
            timeout: Duration::from_millis(50),
        };
        let on_error = Box::new(move |_: &'static str| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let store = SharedStore::start(&settings, on_error, Box::new(|_| {})).unwrap();
        store
            .health
            .background
            .store(MAX_BACKGROUND, Ordering::Relaxed);
        let answers = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = answers.clone();
        let ask = LeaseAsk {
            limit: 1_000,
            width_ms: 6_000,
            want: 4,
            give_back: None,
            next: false,
            report: 1,
        };
        store.quota_take_then(
            "scopegate:q:{t}:".into(),
            ask,
            Box::new(move |g| seen.lock().unwrap().push(g)),
        );
        // Answered at once, before any job could reach the store's thread.
        assert_eq!(*answers.lock().unwrap(), vec![None]);
        assert_eq!(
            store.health.background.load(Ordering::Relaxed),
            MAX_BACKGROUND
        );
        assert_eq!(failures.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn credit_is_spent_after_3_s_of_unbroken_beats_and_stops_2_s_after_the_last_answered() {
        let r = Replicas {
            wanted: AtomicBool::new(true),
            start: Notify::new(),
            count: AtomicU64::new(2),
            since_ms: AtomicU64::new(u64::MAX),
            sent_ms: AtomicU64::new(0),
            on_count: Box::new(|_| {}),
        };
        // Never answered: no count.
        assert_eq!(r.count_at(10_000), None);
        // Beats answered since 10,000, the last sent at 12,900: every other replica has
        // counted this one from 13,000 on.
        r.since_ms.store(10_000, Ordering::Relaxed);
        r.sent_ms.store(12_900, Ordering::Relaxed);
        assert_eq!(r.count_at(12_999), None);
        assert_eq!(r.count_at(13_000), Some(2));
        // No beat answered for 2 s: its id may leave the others' count soon, so it stops.
        assert_eq!(r.count_at(14_899), Some(2));
        assert_eq!(r.count_at(14_900), None);
        // A failed beat breaks the run.
        r.since_ms.store(u64::MAX, Ordering::Relaxed);
        assert_eq!(r.count_at(13_500), None);
    }
}

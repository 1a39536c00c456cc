//! Upstream pools: round-robin over a pool's servers with passive health (a server that
//! refused a connection is left out for a while).
//!
//! Why not pingora-load-balancing: its health is active checks run by a background service per
//! pool, and a pool is rebuilt with every reload; what an edge proxy in front of a few servers
//! needs is "skip the server that just refused, retry on the next", which is these 40 lines and
//! needs no task per pool.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::CertificateDer;

/// One upstream server with passive health: after a failed connect it is skipped for a while.
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    /// Milliseconds since the pool's epoch until which the server is considered down.
    down_until_ms: AtomicU64,
}

impl Server {
    pub fn new(addr: SocketAddr) -> Server {
        Server {
            addr,
            down_until_ms: AtomicU64::new(0),
        }
    }
}

#[derive(Debug)]
pub struct UpstreamPool {
    pub name: String,
    pub servers: Vec<Server>,
    pub tls: bool,
    pub sni: String,
    /// CA certificates for this upstream only (`ca_file`), DER.
    pub ca: Option<Arc<[CertificateDer<'static>]>>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Idle connections kept per server and worker thread (`max_idle`).
    pub max_idle: usize,
    next: AtomicUsize,
    epoch: Instant,
}

/// How long a server that refused a connection is left out of the rotation.
const EJECT_FOR: Duration = Duration::from_secs(5);

impl UpstreamPool {
    pub fn new(
        name: String,
        servers: Vec<Server>,
        tls: bool,
        sni: String,
        ca: Option<Arc<[CertificateDer<'static>]>>,
        timeouts: (Duration, Duration),
    ) -> UpstreamPool {
        UpstreamPool {
            name,
            servers,
            tls,
            sni,
            ca,
            connect_timeout: timeouts.0,
            read_timeout: timeouts.1,
            max_idle: 128,
            next: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Round-robin over the healthy servers; when all are down, over all of them (failing
    /// open to the pool beats a guaranteed 502).
    pub fn pick(&self) -> usize {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        if n == 1 {
            return 0;
        }
        let now = self.now_ms();
        for k in 0..n {
            let i = (start + k) % n;
            if self.servers[i].down_until_ms.load(Ordering::Relaxed) <= now {
                return i;
            }
        }
        start % n
    }

    pub fn mark_failed(&self, server: usize) {
        if let Some(s) = self.servers.get(server) {
            let until = self.now_ms() + EJECT_FOR.as_millis() as u64;
            s.down_until_ms.store(until, Ordering::Relaxed);
        }
    }
}

/// The `class` label of `scopegate_upstream_responses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseClass {
    Informational,
    Success,
    Redirect,
    ClientError,
    ServerError,
    /// No response: the upstream could not be reached or failed mid-way.
    Error,
}

impl ResponseClass {
    pub const ALL: [ResponseClass; 6] = [
        ResponseClass::Informational,
        ResponseClass::Success,
        ResponseClass::Redirect,
        ResponseClass::ClientError,
        ResponseClass::ServerError,
        ResponseClass::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResponseClass::Informational => "1xx",
            ResponseClass::Success => "2xx",
            ResponseClass::Redirect => "3xx",
            ResponseClass::ClientError => "4xx",
            ResponseClass::ServerError => "5xx",
            ResponseClass::Error => "error",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The class of a response status; `failed` when the proxy itself gave up on the upstream
    /// (its 502/504 are not the upstream's answer).
    pub fn of(status: u16, failed: bool) -> ResponseClass {
        if failed && status >= 500 && status != 503 {
            return ResponseClass::Error;
        }
        match status {
            100..=199 => ResponseClass::Informational,
            200..=299 => ResponseClass::Success,
            300..=399 => ResponseClass::Redirect,
            400..=499 => ResponseClass::ClientError,
            500..=599 => ResponseClass::ServerError,
            _ => ResponseClass::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> UpstreamPool {
        let servers = (0..n)
            .map(|i| Server::new(SocketAddr::from(([127, 0, 0, 1], 1000 + i as u16))))
            .collect();
        let t = Duration::from_secs(1);
        UpstreamPool::new("p".into(), servers, false, String::new(), None, (t, t))
    }

    #[test]
    fn round_robin_skips_a_failed_server() {
        let p = pool(3);
        let picks: Vec<usize> = (0..3).map(|_| p.pick()).collect();
        assert_eq!(picks, vec![0, 1, 2]);
        p.mark_failed(1);
        let picks: Vec<usize> = (0..4).map(|_| p.pick()).collect();
        assert!(!picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn classes_by_index_and_status() {
        for (i, c) in ResponseClass::ALL.iter().enumerate() {
            assert_eq!(c.index(), i);
        }
        assert_eq!(ResponseClass::of(204, false), ResponseClass::Success);
        assert_eq!(ResponseClass::of(502, true), ResponseClass::Error);
        assert_eq!(ResponseClass::of(503, true), ResponseClass::ServerError);
        assert_eq!(ResponseClass::of(502, false), ResponseClass::ServerError);
    }
}

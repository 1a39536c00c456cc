//! The Pingora layer, the only code that imports Pingora: the `ProxyHttp` that carries out
//! decisions, the admin listener, metrics, hot reload, key refresh, and server assembly.

pub mod access_log;
pub mod admin;
pub mod clock;
pub mod coalesce;
pub mod console;
pub mod demo_api;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod replay;
pub mod server;
pub mod traces;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_core::protocols::tls::CaType;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::utils::tls::{parse_x509, WrappedX509};

use crate::snapshot::Snapshot;
use crate::upstream::UpstreamPool;
use metrics::LabelCache;

/// A snapshot with what the edge derives from it once: metric series handles for its routes
/// and upstreams, and each upstream server as Pingora's peer (address, TLS, SNI, CA, timeouts),
/// cloned per request.
pub struct Live {
    pub snapshot: Snapshot,
    pub labels: LabelCache,
    /// Per upstream, per server.
    pub peers: Vec<Vec<HttpPeer>>,
}

/// How long a pooled upstream connection may sit idle.
const UPSTREAM_IDLE: Duration = Duration::from_secs(60);

impl Live {
    pub fn new(snapshot: Snapshot) -> Live {
        let labels = LabelCache::new(snapshot.routes.len(), snapshot.upstreams.len());
        let peers = snapshot.upstreams.iter().map(peers_of).collect();
        Live {
            snapshot,
            labels,
            peers,
        }
    }
}

fn peers_of(pool: &UpstreamPool) -> Vec<HttpPeer> {
    let ca: Option<Arc<CaType>> = pool.ca.as_ref().map(|certs| {
        let wrapped: Vec<WrappedX509> = certs
            .iter()
            .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
            .collect();
        Arc::from(wrapped.into_boxed_slice())
    });
    pool.servers
        .iter()
        .map(|server| {
            let mut peer = HttpPeer::new(server.addr, pool.tls, pool.sni.clone());
            let options = &mut peer.options;
            options.connection_timeout = Some(pool.connect_timeout);
            options.total_connection_timeout = Some(pool.connect_timeout);
            options.read_timeout = Some(pool.read_timeout);
            options.write_timeout = Some(pool.read_timeout);
            options.idle_timeout = Some(UPSTREAM_IDLE);
            options.ca = ca.clone();
            peer
        })
        .collect()
}

/// The configuration in use, swapped whole on reload.
pub type LiveConfig = Arc<ArcSwap<Live>>;

//! The Pingora layer, the only code that imports Pingora: the `ProxyHttp` that carries out
//! decisions, the admin listener, metrics, hot reload, key refresh, and server assembly.

pub mod access_log;
pub mod admin;
pub mod clock;
pub mod demo_api;
pub mod keys;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;

use std::sync::Arc;

use arc_swap::ArcSwap;
use pingora_core::protocols::tls::CaType;
use pingora_core::utils::tls::{parse_x509, WrappedX509};

use crate::snapshot::Snapshot;
use metrics::LabelCache;

/// A snapshot with what the edge derives from it once: metric series handles for its routes
/// and upstreams, and the upstreams' CA certificates in Pingora's form.
pub struct Live {
    pub snapshot: Snapshot,
    pub labels: LabelCache,
    pub upstream_ca: Vec<Option<Arc<CaType>>>,
}

impl Live {
    pub fn new(snapshot: Snapshot) -> Live {
        let labels = LabelCache::new(snapshot.routes.len(), snapshot.upstreams.len());
        let upstream_ca = snapshot
            .upstreams
            .iter()
            .map(|u| {
                u.ca.as_ref().map(|certs| {
                    let wrapped: Vec<WrappedX509> = certs
                        .iter()
                        .map(|c| WrappedX509::new(c.to_vec(), parse_x509))
                        .collect();
                    Arc::from(wrapped.into_boxed_slice())
                })
            })
            .collect();
        Live {
            snapshot,
            labels,
            upstream_ca,
        }
    }
}

/// The configuration in use, swapped whole on reload.
pub type LiveConfig = Arc<ArcSwap<Live>>;

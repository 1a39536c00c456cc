//! The compiled configuration: everything the request path needs, built once by `compile`
//! (router, verifier with its issuers and keys, upstream pools, header values). A snapshot
//! never changes; a reload builds a new one and swaps it in.

use std::path::PathBuf;
use std::sync::Arc;

use http::header::HeaderValue;
use http::Method;

use crate::auth::{Principal, Rejection, Verifier};
use crate::routing::{RequiredScopes, Router};
use crate::upstream::UpstreamPool;

/// Settings that take effect only at process start: a reload that changes them is logged and
/// waits for the next restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessSettings {
    pub listen: Vec<String>,
    pub admin_listen: Option<String>,
    pub threads: usize,
    pub shutdown_grace_seconds: u64,
    /// HTTPS listeners (the certificate itself reloads; turning TLS on or off does not).
    pub tls: bool,
}

#[derive(Debug)]
pub struct Route {
    /// `GET /contacts/{id}`: how the route is named in metrics, logs and `check`.
    pub label: String,
    pub path: String,
    pub methods: Vec<Method>,
    pub public: bool,
    pub required: RequiredScopes,
    pub upstream: usize,
    /// `WWW-Authenticate` for a 403 on this route, built once.
    pub insufficient_scope_challenge: HeaderValue,
}

/// The `WWW-Authenticate` values of 401 answers, built once (RFC 6750 §3).
#[derive(Debug)]
pub struct Challenges {
    pub realm: String,
    /// Indexed by `Rejection::slot`: `Bearer realm="..."` for a request without a token (RFC
    /// 6750 §3.1: no error code then), else `... error="invalid_token", error_description="..."`.
    by_rejection: Vec<HeaderValue>,
}

impl Challenges {
    pub fn new(realm: String, by_rejection: Vec<HeaderValue>) -> Self {
        Challenges {
            realm,
            by_rejection,
        }
    }

    /// The challenge for a 401 with this rejection.
    pub fn for_rejection(&self, rejection: &Rejection) -> &HeaderValue {
        &self.by_rejection[rejection.slot()]
    }
}

/// Accepted `aud` values per issuer (by index), for the top-level routes.
#[derive(Debug, Default)]
pub struct Audiences(pub Vec<Vec<String>>);

impl Audiences {
    pub fn accept(&self, principal: &Principal) -> bool {
        self.0
            .get(principal.issuer)
            .is_some_and(|accepted| principal.has_audience(accepted))
    }
}

/// What is added to, or removed from, requests forwarded upstream (claim headers live in the
/// verifier, which renders them).
#[derive(Debug, Default)]
pub struct ForwardPlan {
    pub strip_token: bool,
}

#[derive(Debug)]
pub struct Snapshot {
    pub generation: u64,
    pub process: ProcessSettings,
    pub router: Router,
    pub routes: Vec<Route>,
    pub verifier: Verifier,
    pub audiences: Audiences,
    pub upstreams: Vec<UpstreamPool>,
    pub forward: ForwardPlan,
    pub challenges: Challenges,
    /// Certificate and key for HTTPS listeners (HTTP/2 by ALPN).
    pub tls: Option<ServerTls>,
}

/// The server certificate, loaded with the snapshot so a reload picks up renewed files.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub certified: Arc<rustls::sign::CertifiedKey>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish()
    }
}

impl Snapshot {
    /// Files besides the config that this snapshot was built from: jwks_files and the TLS pair.
    pub fn source_files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .verifier
            .issuers
            .iter()
            .filter_map(|i| match &i.keys.source {
                crate::auth::keys::KeySource::File(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        if let Some(t) = &self.tls {
            files.push(t.cert.clone());
            files.push(t.key.clone());
        }
        files
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

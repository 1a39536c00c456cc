//! The framework ceiling for the load bench: a Pingora `ProxyHttp` that forwards every request
//! unchanged, built from the same crate versions with scopegate's runtime settings (current-
//! thread workers, no downstream compression module, mimalloc, no L4 read buffer).
//!
//!   bare_pingora LISTEN UPSTREAM [THREADS [CERT KEY]]   (with CERT and KEY: TLS, HTTP/2 by ALPN)

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct PassThrough {
    upstream: std::net::SocketAddr,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) {}

    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream) = (
        args[1].clone(),
        args[2].parse().expect("UPSTREAM host:port"),
    );
    let threads = args.get(3).and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf = ServerConf {
        threads,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf: Arc<ServerConf> = server.configuration.clone();
    let mut proxy = pingora_proxy::http_proxy_service(&conf, PassThrough { upstream });
    let mut listener = ListenerConfig::tcp(&listen)
        .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
    if let (Some(cert), Some(key)) = (args.get(4), args.get(5)) {
        let mut tls = pingora_core::listeners::tls::TlsSettings::intermediate(cert, key)
            .expect("CERT and KEY");
        tls.enable_h2();
        listener = listener.tls(tls);
    }
    proxy.add_listener(listener);
    server.add_service(proxy);
    server.run_forever();
}

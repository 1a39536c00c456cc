//! An experiment for the load bench: a pass-through on Pingora's sessions without its proxy
//! loop (`pingora-proxy`): one task per request reads the request (Pingora's parser), writes
//! it to a pooled upstream session, and copies the response back, in sequence. Same runtime
//! settings as `bare_pingora`. It measures what a lean loop over Pingora's own sessions could
//! save against `ProxyHttp`.
//!
//!   lean_pingora LISTEN UPSTREAM [THREADS [CERT KEY]]   (with CERT and KEY: TLS, HTTP/2 by ALPN)

use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora_core::connectors::http::Connector;
use pingora_core::listeners::ListenerConfig;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::{L4BufferSettings, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{Server, ShutdownWatch};
use pingora_core::services::listening::Service;
use pingora_core::upstreams::peer::HttpPeer;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Lean {
    peer: HttpPeer,
    connector: Connector,
}

impl Lean {
    async fn forward(&self, session: &mut ServerSession) -> Option<()> {
        let (mut up, _reused) = self.connector.get_http_session(&self.peer).await.ok()?;
        let mut req = Box::new(session.req_header().clone());
        if req.version != http::Version::HTTP_11 {
            req.set_version(http::Version::HTTP_11);
            if req.headers.get(http::header::HOST).is_none() {
                let host = req.uri.authority().map(|a| a.as_str().to_string())?;
                req.insert_header(http::header::HOST, host).ok()?;
            }
        }
        up.write_request_header(req).await.ok()?;
        while let Some(body) = session.read_request_body().await.ok()? {
            up.write_request_body(body, false).await.ok()?;
        }
        up.finish_request_body().await.ok()?;
        up.read_response_header().await.ok()?;
        let resp = Box::new(up.response_header()?.clone());
        session.write_response_header(resp).await.ok()?;
        while !up.response_done() {
            match up.read_response_body().await.ok()? {
                Some(body) => session.write_response_body(body, false).await.ok()?,
                None => break,
            }
        }
        session.finish_body().await.ok()?;
        self.connector
            .release_http_session(up, &self.peer, None)
            .await;
        Some(())
    }
}

#[async_trait]
impl HttpServerApp for Lean {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.is_http2() && !session.read_request().await.ok()? {
            return None;
        }
        self.forward(&mut session).await?;
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, upstream): (String, std::net::SocketAddr) = (
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
    let app = Lean {
        peer: HttpPeer::new(upstream, false, String::new()),
        connector: Connector::new(None),
    };
    let mut service = Service::new("lean".to_string(), app);
    let mut listener = ListenerConfig::tcp(&listen)
        .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
    if let (Some(cert), Some(key)) = (args.get(4), args.get(5)) {
        let mut tls = pingora_core::listeners::tls::TlsSettings::intermediate(cert, key)
            .expect("CERT and KEY");
        tls.enable_h2();
        listener = listener.tls(tls);
    }
    service.add_listener(listener);
    server.add_service(service);
    server.run_forever();
}

//! The framework ceiling for the load bench: a Pingora `ProxyHttp` that forwards every request
//! unchanged, built from the same crate versions with scopegate's runtime settings (current-
//! thread workers, no downstream compression module, mimalloc, no L4 read buffer).
//!
//! With `--no-proxy-loop`, the same pass-through on Pingora's sessions without its proxy loop
//! (`pingora-proxy`): one task per request reads the request (Pingora's parser), writes it to a
//! pooled upstream session and copies the response back, in sequence; what a lean loop over
//! Pingora's own sessions could save against `ProxyHttp`.
//!
//! With `--answer-here`, Pingora's sessions answer every request themselves (the upstream's
//! 200 and its 11-byte JSON body, no upstream at all): what Pingora's server side alone costs.
//!
//!   bare_pingora [--no-proxy-loop | --answer-here] LISTEN UPSTREAM [THREADS [CERT KEY]]
//!   (with CERT and KEY: TLS, HTTP/2 by ALPN)

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

struct Sessions {
    peer: HttpPeer,
    connector: Connector,
    /// Answer here instead of forwarding (`--answer-here`).
    answer_here: bool,
}

impl Sessions {
    async fn answer(&self, session: &mut ServerSession) -> Option<()> {
        if !session.is_http2() {
            while session.read_request_body().await.ok()?.is_some() {}
        }
        let mut resp = pingora_http::ResponseHeader::build(200, Some(2)).ok()?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")
            .ok()?;
        resp.insert_header(http::header::CONTENT_LENGTH, "11")
            .ok()?;
        session.write_response_header(Box::new(resp)).await.ok()?;
        let body = bytes::Bytes::from_static(br#"{"ok":true}"#);
        session.write_response_body(body, true).await.ok()?;
        session.finish_body().await.ok()?;
        Some(())
    }

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
impl HttpServerApp for Sessions {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        _shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.is_http2() && !session.read_request().await.ok()? {
            return None;
        }
        if self.answer_here {
            self.answer(&mut session).await?;
        } else {
            self.forward(&mut session).await?;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let stream = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
    }
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let answer_here = args.first().is_some_and(|a| a == "--answer-here");
    let no_proxy_loop = answer_here || args.first().is_some_and(|a| a == "--no-proxy-loop");
    if no_proxy_loop {
        args.remove(0);
    }
    let (listen, upstream): (String, std::net::SocketAddr) = (
        args[0].clone(),
        args[1].parse().expect("UPSTREAM host:port"),
    );
    let threads = args.get(2).and_then(|t| t.parse().ok()).unwrap_or(1);
    let conf = ServerConf {
        threads,
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut listener = ListenerConfig::tcp(&listen)
        .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
    if let (Some(cert), Some(key)) = (args.get(3), args.get(4)) {
        let mut tls = pingora_core::listeners::tls::TlsSettings::intermediate(cert, key)
            .expect("CERT and KEY");
        tls.enable_h2();
        listener = listener.tls(tls);
    }
    if no_proxy_loop {
        let app = Sessions {
            peer: HttpPeer::new(upstream, false, String::new()),
            connector: Connector::new(None),
            answer_here,
        };
        let mut service = Service::new("sessions".to_string(), app);
        service.add_listener(listener);
        server.add_service(service);
    } else {
        let conf: Arc<ServerConf> = server.configuration.clone();
        let mut proxy = pingora_proxy::http_proxy_service(&conf, PassThrough { upstream });
        proxy.add_listener(listener);
        server.add_service(proxy);
    }
    server.run_forever();
}

//! Limits on client connections, which Pingora leaves open: how many may be open at once, how
//! long a request header may take to arrive as a whole, and how long a keep-alive connection
//! may sit idle. Slow-header and idle-connection floods then cost bounded memory and file
//! descriptors.
//!
//! `Limited` wraps the proxy's `ServerApp`: it counts connections, closes one over the limit at
//! once, waits for each keep-alive request's first byte at most `keepalive`, and from then
//! gives the whole header `header` to arrive. The proxy tells it the header is in
//! (`header_received`, from `early_request_filter`) through a task-local clock, since Pingora
//! reads the header inside the app's own future.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::Stream;
use pingora_core::server::ShutdownWatch;

/// The `[server]` limits, in force from process start.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header: Duration,
    pub keepalive: Duration,
}

tokio::task_local! {
    static HEADER_IN: Arc<AtomicBool>;
}

/// The request header has been read in full (called by the proxy before deciding).
pub fn header_received() {
    let _ = HEADER_IN.try_with(|h| h.store(true, Ordering::Relaxed));
}

/// Client connections open now, across listeners (for tests and metrics).
pub static OPEN_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);

pub struct Limited<A> {
    pub inner: Arc<A>,
    pub limits: ConnLimits,
}

struct Open;

impl Drop for Open {
    fn drop(&mut self) {
        OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Limited<A> {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        if OPEN_CONNECTIONS.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            OPEN_CONNECTIONS.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(
                max = self.limits.max_connections,
                "server.max_connections reached: connection closed"
            );
            return None; // dropping the stream closes it
        }
        let _open = Open;
        let mut stream = stream;
        let mut first = true;
        loop {
            if !first {
                // Idle between keep-alive requests: at most `keepalive` until the next one starts.
                let mut byte = [0u8; 1];
                match tokio::time::timeout(self.limits.keepalive, stream.try_peek(&mut byte)).await
                {
                    Ok(Ok(_)) => {}
                    _ => return None,
                }
            }
            first = false;
            let header_in = Arc::new(AtomicBool::new(false));
            let request =
                HEADER_IN.scope(header_in.clone(), self.inner.process_new(stream, shutdown));
            let deadline = async {
                tokio::time::sleep(self.limits.header).await;
                if header_in.load(Ordering::Relaxed) {
                    std::future::pending::<()>().await;
                }
            };
            let next = tokio::select! {
                next = request => next,
                () = deadline => {
                    tracing::debug!("request header not complete within server.header_timeout_seconds: connection closed");
                    return None;
                }
            };
            stream = next?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

//! One send per response where it fits: the HTTP/1 downstream connection's writes are gathered
//! and sent together when Pingora's session flushes, or when it next waits on the connection.
//!
//! Pingora writes a response head and its body pieces as separate writes, and flushes a
//! `Content-Length` body only at its end. Without a buffer each write is a `send` (and over TLS a
//! record of its own): two per response at least. Pingora's own write buffer (its L4 setting)
//! joins them, but it holds a head and any body pieces until the body ends or the buffer fills,
//! so a slow upstream body would keep even the head from the client. Here the gathered bytes
//! also go out whenever the session goes back to the connection to read, which its proxy loop
//! does each time it has written what the upstream has sent so far (its idle read, which
//! notices a client that went away): so a head and body that arrive together leave in one
//! `send` (one TLS record), and what arrives later is never held for more. One exception: once a
//! client has sent its next request while a response is still under way (pipelining), Pingora
//! keeps those bytes and stops reading, so a slow `Content-Length` body's pieces, head included,
//! then go out with its end or with every 16 KiB of it, as through Pingora's own write buffer.
//!
//! Bytes are written in the order given; nothing is parsed here.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::raw_connect::ProxyDigest;
use pingora_core::protocols::tls::{SslDigest, TlsRef};
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Writes at least this large go straight through (after what is gathered): a body piece this
/// size is a `send` of its own anyway, and copying it would only cost. 16 KiB is also the
/// largest TLS record, so a head and a body that fit leave as one record.
const GATHER: usize = 16 * 1024;

/// The most an idle connection keeps allocated for the next response (a typical head and a
/// small body fit).
const KEEP: usize = 1024;

/// A downstream HTTP/1 connection whose writes are gathered (see the module doc).
#[derive(Debug)]
pub struct Coalesced {
    inner: Stream,
    /// Written by the session, not yet sent; empty but allocated after the first response.
    pending: Vec<u8>,
    /// How much of `pending` the connection has taken.
    sent: usize,
    /// Bytes the connection has handed to its reader, ever (`read_so_far`). Atomic only to be
    /// readable through `&dyn Any`; the owner adds to it through `&mut` with no atomic step.
    delivered: AtomicU64,
}

impl Coalesced {
    pub fn new(inner: Stream) -> Self {
        Coalesced {
            inner,
            pending: Vec::new(),
            sent: 0,
            delivered: AtomicU64::new(0),
        }
    }

    /// The bytes read from `stream` so far, when it is a `Coalesced` connection.
    pub fn read_so_far(stream: &Stream) -> Option<u64> {
        let this = stream.as_any().downcast_ref::<Coalesced>()?;
        Some(this.delivered.load(Ordering::Relaxed))
    }

    /// Send what is gathered; `Ready(Ok)` once all of it is with the connection.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.sent = 0;
        if self.pending.capacity() > KEEP {
            // A connection that goes idle holds little: only a small buffer is kept.
            self.pending = Vec::new();
        } else {
            self.pending.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Coalesced {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.pending.len() + buf.len() > GATHER {
            ready!(this.poll_send(cx))?;
        }
        if buf.len() >= GATHER {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.pending.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl AsyncRead for Coalesced {
    /// The session reads only once it has written all it has for now: what is gathered is
    /// sent first. A client that does not take it (a full send buffer) does not stop the read;
    /// the rest goes with the next write, flush or read.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pending.is_empty() {
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            if this.pending.is_empty() {
                if let Poll::Ready(Err(e)) = Pin::new(&mut this.inner).poll_flush(cx) {
                    return Poll::Ready(Err(e));
                }
            }
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut this.inner).poll_read(cx, buf);
        *this.delivered.get_mut() += (buf.filled().len() - before) as u64;
        read
    }
}

#[async_trait]
impl Shutdown for Coalesced {
    async fn shutdown(&mut self) {
        // What is gathered is the end of a response: it goes out before the close.
        let _ = self.flush().await;
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for Coalesced {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Coalesced {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Coalesced {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Coalesced {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Coalesced {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for Coalesced {
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::io::AsyncReadExt;

    /// A connection that records every write it is given, and has `input` to read.
    #[derive(Debug, Default)]
    struct Wire {
        writes: Arc<Mutex<Vec<Vec<u8>>>>,
        input: Vec<u8>,
        shut: Arc<Mutex<bool>>,
    }

    impl AsyncWrite for Wire {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.writes.lock().unwrap().push(b.to_vec());
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            *self.shut.lock().unwrap() = true;
            Poll::Ready(Ok(()))
        }
    }
    impl AsyncRead for Wire {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = self.get_mut();
            let n = this.input.len().min(buf.remaining());
            buf.put_slice(&this.input[..n]);
            this.input.drain(..n);
            Poll::Ready(Ok(()))
        }
    }
    #[async_trait]
    impl Shutdown for Wire {
        async fn shutdown(&mut self) {
            *self.shut.lock().unwrap() = true;
        }
    }
    impl UniqueID for Wire {
        fn id(&self) -> UniqueIDType {
            7
        }
    }
    impl Ssl for Wire {}
    impl GetTimingDigest for Wire {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            vec![]
        }
    }
    impl GetProxyDigest for Wire {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Wire {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }
    impl Peek for Wire {}

    fn wire(input: &[u8]) -> (Coalesced, Arc<Mutex<Vec<Vec<u8>>>>, Arc<Mutex<bool>>) {
        let w = Wire {
            input: input.to_vec(),
            ..Default::default()
        };
        let (writes, shut) = (w.writes.clone(), w.shut.clone());
        (Coalesced::new(Box::new(w)), writes, shut)
    }

    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n";

    #[tokio::test]
    async fn a_head_and_its_body_leave_in_one_write_when_flushed() {
        let (mut c, writes, _) = wire(b"");
        c.write_all(HEAD).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        c.write_all(b" world").await.unwrap();
        assert!(
            writes.lock().unwrap().is_empty(),
            "nothing sent before the flush"
        );
        c.flush().await.unwrap();
        assert_eq!(
            *writes.lock().unwrap(),
            vec![[HEAD, b"hello world"].concat()]
        );
        assert_eq!(c.id(), 7);
    }

    #[tokio::test]
    async fn what_is_gathered_leaves_before_the_session_reads() {
        let (mut c, writes, _) = wire(b"GET / HTTP/1.1\r\n");
        c.write_all(HEAD).await.unwrap();
        let mut probe = [0u8; 1];
        assert_eq!(c.read(&mut probe).await.unwrap(), 1);
        assert_eq!(*writes.lock().unwrap(), vec![HEAD.to_vec()]);
        assert_eq!(&probe, b"G");
    }

    #[tokio::test]
    async fn a_large_write_goes_straight_through_after_what_is_gathered() {
        let (mut c, writes, _) = wire(b"");
        let big = vec![b'x'; GATHER];
        c.write_all(HEAD).await.unwrap();
        c.write_all(&big).await.unwrap();
        assert_eq!(*writes.lock().unwrap(), vec![HEAD.to_vec(), big.clone()]);
        // Gathered pieces that would pass the limit are sent first, in order.
        let piece = vec![b'y'; GATHER - 10];
        c.write_all(&piece).await.unwrap();
        c.write_all(&piece).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(writes.lock().unwrap()[2..], [piece.clone(), piece]);
    }

    #[tokio::test]
    async fn a_close_sends_what_is_gathered_first_and_little_stays_allocated() {
        let (mut c, writes, shut) = wire(b"");
        c.write_all(&vec![b'z'; GATHER - 1]).await.unwrap();
        c.flush().await.unwrap();
        assert!(
            c.pending.capacity() <= KEEP,
            "an idle connection keeps a small buffer"
        );
        c.write_all(HEAD).await.unwrap();
        Shutdown::shutdown(&mut c).await;
        assert_eq!(writes.lock().unwrap().last().unwrap(), HEAD);
        assert!(*shut.lock().unwrap());
    }

    #[tokio::test]
    async fn the_bytes_read_are_counted_through_the_boxed_stream() {
        let (c, _, _) = wire(b"GET / HTTP/1.1\r\n\r\nGET /next");
        let mut stream: Stream = Box::new(c);
        assert_eq!(Coalesced::read_so_far(&stream), Some(0));
        let mut buf = [0u8; 18];
        stream.read_exact(&mut buf).await.unwrap();
        assert_eq!(Coalesced::read_so_far(&stream), Some(18));
        let mut rest = Vec::new();
        stream.read_to_end(&mut rest).await.unwrap();
        assert_eq!(Coalesced::read_so_far(&stream), Some(27));
        // Any other stream is not counted (the caller then checks another way).
        let plain: Stream = Box::<Wire>::default();
        assert_eq!(Coalesced::read_so_far(&plain), None);
    }
}

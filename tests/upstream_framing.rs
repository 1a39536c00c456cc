//! Responses of every HTTP/1.1 framing reach the client whole (Content-Length, chunked with
//! trailers, until-close, HEAD, interim 1xx), and both sides' connections stay usable after
//! them: what the proxy does with a response does not depend on which request path carried it.
//! The upstream here is a raw TCP server that writes its responses byte for byte.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use common::*;

/// Connections the raw upstream has accepted.
struct Raw {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

/// The response to a request for `path`, as bytes, and whether to close after it.
fn script(method: &str, path: &str) -> (Vec<&'static [u8]>, bool) {
    match (method, path) {
        // Split across writes, mid size line and mid data.
        (_, "/public/chunked") => (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n5\r",
                b"\nhel",
                b"lo\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
            ],
            false,
        ),
        // No length at all: the body ends when the upstream closes.
        (_, "/public/until-close") => (
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ",
                b"the end",
            ],
            true,
        ),
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        (_, "/public/both") => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwhee\r\n0\r\n\r\n"],
            false,
        ),
        (_, "/public/early-hints") => (
            vec![b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
            false,
        ),
        // The upstream ends its side; the client's connection is not the upstream's.
        (_, "/public/bye") => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\nKeep-Alive: timeout=5\r\n\r\nbye"],
            true,
        ),
        ("HEAD", _) => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n"],
            false,
        ),
        (_, "/public/no-content") => (vec![b"HTTP/1.1 204 No Content\r\n\r\n"], false),
        // Broken before anything can be sent: an invalid Content-Length.
        (_, "/public/bad-length") => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello"],
            true,
        ),
        // Broken after the head: a chunk size that is not hex.
        (_, "/public/bad-chunk") => (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
                b"zz\r\nnope\r\n0\r\n\r\n",
            ],
            true,
        ),
        _ => (
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nplain"],
            false,
        ),
    }
}

/// `/public/hold`: the upstream has its request (`HELD`) and answers once `HOLD` is released.
static HELD: AtomicBool = AtomicBool::new(false);
/// `/public/body`: the upstream has the request's head (`HEAD_IN`) and reads its chunked body.
static HEAD_IN: AtomicBool = AtomicBool::new(false);
static HOLD: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

fn release_hold() {
    *HOLD.0.lock().unwrap() = true;
    HOLD.1.notify_all();
}

fn serve_raw(mut stream: TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let mut first = head.split(' ');
        let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
        if path == "/public/body" {
            HEAD_IN.store(true, Ordering::SeqCst);
            let end = loop {
                if let Some(i) = buf.windows(5).position(|w| w == b"0\r\n\r\n") {
                    break i + 5;
                }
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            buf.drain(..end);
        }
        if path == "/public/hold" {
            HELD.store(true, Ordering::SeqCst);
            let mut released = HOLD.0.lock().unwrap();
            while !*released {
                released = HOLD.1.wait(released).unwrap();
            }
        }
        let (parts, close) = script(method, path);
        for part in parts {
            if stream.write_all(part).is_err() {
                return;
            }
            let _ = stream.flush();
        }
        if close {
            return;
        }
    }
}

fn start_raw() -> Raw {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            count.fetch_add(1, Ordering::SeqCst);
            let _ = stream.set_nodelay(true);
            std::thread::spawn(move || serve_raw(stream));
        }
    });
    Raw { addr, accepted }
}

fn proxy_for(raw: &Raw) -> Proxy {
    let port = free_port();
    Proxy::start(&config(port, &[raw.addr], ""), port)
}

fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: api.test\r\n\r\n").into_bytes()
}

#[test]
fn every_framing_reaches_the_client_whole_on_one_keep_alive_connection() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut c = Client::connect(p.addr);
    let cases: [(&str, &[u8]); 6] = [
        ("/public/chunked", b"hello world"),
        ("/public/until-close", b"until the end"),
        ("/public/both", b"whee"),
        ("/public/early-hints", b"ok"),
        ("/public/bye", b"bye"),
        ("/public/plain", b"plain"),
    ];
    // Twice over, so that each case also follows every other on the same connections.
    for round in 0..2 {
        for (path, body) in cases {
            let mut r = c.send(&get(path));
            // Interim responses are relayed, as RFC 9110 §15.2 asks of a proxy.
            if path == "/public/early-hints" {
                assert_eq!(r.status, 103, "{path} (round {round})");
                assert_eq!(r.header("link"), Some("</style.css>"));
                r = c.read_response(false);
            }
            assert_eq!(r.status, 200, "{path} (round {round})");
            assert_eq!(r.body, body, "{path} (round {round})");
            assert_eq!(
                r.header("connection")
                    .map(str::to_ascii_lowercase)
                    .as_deref(),
                Some("keep-alive"),
                "{path}: the upstream's Connection header is its own"
            );
            assert!(r.header("keep-alive").is_none(), "{path}");
            assert!(r.header("date").is_some(), "{path}");
            let lengths = r
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .count();
            let coded = r.header("transfer-encoding").is_some();
            assert!(
                !(coded && lengths > 0),
                "{path}: Content-Length beside Transfer-Encoding"
            );
        }
    }
    // The interim 103 and the answer are two responses: the 103's fields are not the answer's.
    let interim = c.send(&get("/public/early-hints"));
    assert_eq!(interim.status, 103);
    let r = c.read_response(false);
    assert_eq!(r.body, b"ok");
    assert!(r.header("link").is_none());
}

#[test]
fn head_and_204_answers_have_no_body_and_the_connection_goes_on() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut c = Client::connect(p.addr);
    for _ in 0..2 {
        let r = c.send(b"HEAD /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-length"), Some("5"));
        let r = c.send(&get("/public/no-content"));
        assert_eq!(r.status, 204);
        let r = c.send(&get("/public/plain"));
        assert_eq!(r.body, b"plain");
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut c = Client::connect(p.addr);
    let mut both = get("/public/chunked");
    both.extend_from_slice(&get("/public/plain"));
    both.extend_from_slice(b"HEAD /public/x HTTP/1.1\r\nHost: api.test\r\n\r\n");
    let first = c.send(&both);
    assert_eq!(first.body, b"hello world");
    let second = c.read_response(false);
    assert_eq!(second.body, b"plain");
    let third = c.read_response(true);
    assert_eq!(third.header("content-length"), Some("5"));
    // And the connection still serves.
    assert_eq!(c.send(&get("/public/plain")).body, b"plain");
}

/// A request sent on its own, then the next one sent while the first is still at the upstream:
/// the second one's bytes come after a session given exactly one header (which then skips
/// looking for bytes Pingora kept), or are read by the session while it answers (and then
/// must reach the next request's parser); either way both are answered, in order.
#[test]
fn a_request_sent_while_the_one_before_is_at_the_upstream_is_answered_next() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(&get("/public/hold")).unwrap();
    assert!(
        eventually(30, || HELD.load(Ordering::SeqCst)),
        "the upstream got no request"
    );
    s.write_all(&get("/public/chunked")).unwrap();
    release_hold();
    let mut c = Client::from_stream(s);
    assert_eq!(c.read_response(false).body, b"plain");
    assert_eq!(c.read_response(false).body, b"hello world");
    // And the connection still serves.
    assert_eq!(c.send(&get("/public/plain")).body, b"plain");
}

/// A request whose body comes after its head has gone upstream, sent together with the next
/// request: Pingora's session reads the body and the next request's bytes with it, and keeps
/// those for the next session, which must be given them.
#[test]
fn a_request_sent_with_the_body_of_the_one_before_is_answered_next() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(
        b"POST /public/body HTTP/1.1\r\nHost: api.test\r\nTransfer-Encoding: chunked\r\n\r\n",
    )
    .unwrap();
    assert!(
        eventually(30, || HEAD_IN.load(Ordering::SeqCst)),
        "the head never reached the upstream"
    );
    s.write_all(
        &[
            b"5\r\nhello\r\n0\r\n\r\n".as_slice(),
            &get("/public/chunked"),
        ]
        .concat(),
    )
    .unwrap();
    let mut c = Client::from_stream(s);
    assert_eq!(c.read_response(false).body, b"plain");
    assert_eq!(c.read_response(false).body, b"hello world");
    assert_eq!(c.send(&get("/public/plain")).body, b"plain");
}

#[test]
fn upstream_connections_are_kept_and_one_the_upstream_closed_is_replaced() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut c = Client::connect(p.addr);
    for _ in 0..20 {
        assert_eq!(c.send(&get("/public/plain")).body, b"plain");
    }
    let kept = raw.accepted.load(Ordering::SeqCst);
    assert!(
        kept <= 2,
        "20 sequential requests took {kept} upstream connections"
    );
    // The upstream closes after this one; the next request needs a new connection and gets it.
    assert_eq!(c.send(&get("/public/bye")).body, b"bye");
    for _ in 0..5 {
        assert_eq!(c.send(&get("/public/plain")).body, b"plain");
    }
    // A new client finds the kept connection (or a new one) and is served.
    let mut other = Client::connect(p.addr);
    assert_eq!(other.send(&get("/public/plain")).body, b"plain");
}

#[test]
fn a_client_that_asks_to_close_gets_its_answer_then_the_close() {
    let raw = start_raw();
    let p = proxy_for(&raw);
    let mut c = Client::connect(p.addr);
    let r = c.send(b"GET /public/chunked HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n");
    assert_eq!(r.body, b"hello world");
    assert_eq!(r.header("connection"), Some("close"));
    let mut s = c.into_stream();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the last answer: {rest:?}");
}

/// SPEC "Requests on the wire": framing broken before the head is a 502 counted in class `5xx`;
/// broken after it, the client connection is cut, the access log keeps the status sent with
/// reason `upstream_body_error`, and the upstream response counts in class `error`.
#[test]
fn broken_upstream_framing_is_logged_and_counted_as_what_the_client_got() {
    let raw = start_raw();
    let (port, admin) = (free_port(), free_port());
    let text = config_full(port, Some(admin), &[raw.addr], &file_issuer(), "").replacen(
        "threads = 1\n",
        "threads = 1\naccess_log = \"json\"\n",
        1,
    );
    let p = Proxy::start(&text, port);

    let early = Client::connect(p.addr).send(&get("/public/bad-length"));
    assert_eq!(early.status, 502);
    assert_eq!(early.json()["error"], "bad_gateway");

    let mut late = Client::connect(p.addr).into_stream();
    late.write_all(&get("/public/bad-chunk")).unwrap();
    let mut got = Vec::new();
    late.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let _ = late.read_to_end(&mut got);
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        !got.ends_with("0\r\n\r\n"),
        "the body must not look complete: {got:?}"
    );

    let lines = || -> Vec<serde_json::Value> {
        p.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v.get("decision").is_some())
            .collect()
    };
    assert!(eventually(10, || lines().len() >= 2), "{}", p.log());
    let cut = lines()
        .into_iter()
        .find(|v| v["path"] == "/public/bad-chunk" && v["status"] == 200)
        .unwrap_or_else(|| panic!("{}", p.log()));
    assert_eq!(cut["reason"], "upstream_body_error");
    let metrics =
        || String::from_utf8_lossy(&http_get(admin_addr(admin), "/metrics").body).into_owned();
    assert!(
        eventually(10, || {
            let m = metrics();
            metric(
                &m,
                "scopegate_upstream_responses_total{class=\"error\",upstream=\"contacts\"}",
            ) >= 1.0
                && metric(
                    &m,
                    "scopegate_upstream_responses_total{class=\"5xx\",upstream=\"contacts\"}",
                ) >= 1.0
        }),
        "{}",
        metrics()
    );
}

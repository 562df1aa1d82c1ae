//! The HTTP server both APIs run on. Unlike a bare `axum::serve` it cuts
//! off clients that send their headers too slowly or stop reading their
//! answer, and its shutdown has a deadline: in-flight requests get `DRAIN`
//! to finish, then every connection still open is closed, whatever its
//! client is doing.
//!
//! It also sheds load (`Limits`): past a number of open connections or of
//! requests in flight, a client is answered 503 `overloaded` with
//! `Retry-After` at once. Without a bound every request was taken and
//! waited its turn, so under ten times the load the server could carry,
//! every client saw seconds of latency (a client with a 1 s timeout saw
//! only failures) and memory followed what arrived. Bounded, the requests
//! taken are answered about as fast as when the server was not loaded,
//! and the rest learn at once that they should come back.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Sleep;

use crate::EdgeError;

/// Headers must arrive within this of the request's start.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for in-flight requests.
pub const DRAIN: Duration = Duration::from_secs(6);
/// A client that takes no bytes of its answer for this long is dropped (a
/// reader that never reads would otherwise hold its answer in memory).
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// How much one server takes at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once; one more is answered 503 and closed.
    pub connections: usize,
    /// Requests being answered at once (probes and `/metrics` aside); one
    /// more is answered 503.
    pub in_flight: usize,
}

impl Default for Limits {
    /// Measured with `cargo xtask bench overload` on 2 cores: 32 clients
    /// are what the command API carries best; 128 in flight keeps a request
    /// taken under ten times that load within a few times its unloaded
    /// latency.
    /// 512 connections per API keeps `serve`'s two APIs within the usual
    /// 1,024 open files.
    fn default() -> Self {
        Limits { connections: 512, in_flight: 128 }
    }
}

/// Paths never shed: an orchestrator probing an overloaded server must
/// not take it for a dead one, and its metrics are how overload is seen.
const NEVER_SHED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

fn never_shed(path: &str) -> bool {
    NEVER_SHED.contains(&path)
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains;
/// sheds load past `limits`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    for reason in ["connections", "in_flight"] {
        metrics::counter!("storekeeper_http_shed_total", "reason" => reason).increment(0);
    }
    let in_flight = Arc::new(Semaphore::new(limits.in_flight.max(1)));
    let router = router.layer(axum::middleware::from_fn(move |request: axum::extract::Request, next: axum::middleware::Next| {
        let in_flight = in_flight.clone();
        async move {
            if never_shed(request.uri().path()) {
                return next.run(request).await;
            }
            match in_flight.try_acquire_owned() {
                Ok(_permit) => next.run(request).await,
                Err(_) => {
                    metrics::counter!("storekeeper_http_shed_total", "reason" => "in_flight").increment(1);
                    axum::response::IntoResponse::into_response(EdgeError::Overloaded)
                }
            }
        }
    }));
    let connections_open = Arc::new(Semaphore::new(limits.connections.max(1)));
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true).max_headers(128);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, _) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of file descriptors and the like: pause, go on.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Ok(open) = connections_open.clone().try_acquire_owned() else {
                    connections.spawn(beyond_limit(stream, builder.clone(), router.clone()));
                    continue;
                };
                let connection = builder.serve_connection(io(stream), TowerToHyperService::new(router.clone()));
                let connection = graceful.watch(connection);
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!(open = connections.len(), "connections still open after the drain deadline; closing them");
    }
    connections.shutdown().await;
    Ok(())
}

/// A connection past the limit: a health probe or a scrape (`never_shed`)
/// is answered, one request and closed, so that an orchestrator never
/// takes a busy server for a dead one; anything else is `refuse`d.
async fn beyond_limit(stream: tokio::net::TcpStream, mut builder: http1::Builder, router: Router) {
    let mut start = [0u8; 16];
    let peeked = match tokio::time::timeout(Duration::from_millis(100), stream.peek(&mut start)).await {
        Ok(Ok(n)) => &start[..n],
        _ => &[][..],
    };
    let probe = NEVER_SHED.iter().any(|path| {
        peeked
            .strip_prefix(b"GET ")
            .and_then(|rest| rest.strip_prefix(path.as_bytes()))
            .is_some_and(|rest| matches!(rest.first(), Some(b' ' | b'?')))
    });
    if probe {
        builder.keep_alive(false);
        let _ = builder.serve_connection(io(stream), TowerToHyperService::new(router)).await;
        return;
    }
    metrics::counter!("storekeeper_http_shed_total", "reason" => "connections").increment(1);
    refuse(stream).await;
}

/// Answers a connection past the limit 503 `overloaded` and closes it,
/// having read what its client sent at once (closing with unread bytes
/// would reset the connection before the answer is read).
async fn refuse(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut request)).await;
    let answer = crate::refusals::raw_answer(&EdgeError::Overloaded);
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    })
    .await;
}

/// A connection as hyper is given it: writes that stall fail, and hyper's
/// own bare refusals go out as problem+json.
fn io(stream: tokio::net::TcpStream) -> TokioIo<crate::refusals::Refusals<StallGuard<tokio::net::TcpStream>>> {
    TokioIo::new(crate::refusals::Refusals::new(StallGuard::new(stream)))
}

/// A connection whose writes fail once the peer has taken nothing for
/// `WRITE_STALL_TIMEOUT`.
struct StallGuard<T> {
    inner: T,
    stalled_since: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    fn new(inner: T) -> Self {
        StallGuard { inner, stalled_since: None }
    }

    /// Pending from the socket: start (or check) the stall clock.
    fn pending<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        let clock = self.stalled_since.get_or_insert_with(|| Box::pin(tokio::time::sleep(WRITE_STALL_TIMEOUT)));
        match clock.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    fn poll_write_vectored(mut self: Pin<&mut Self>, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.pending(cx),
            ready => {
                self.stalled_since = None;
                ready
            }
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::sync::Semaphore;

    use super::{Limits, serve};

    /// A server whose `/slow` answers once the test lets it (a permit of
    /// `gate` each); `/healthz` and `/fast` at once.
    async fn server(limits: Limits) -> (SocketAddr, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let held = gate.clone();
        let router = Router::new()
            .route(
                "/slow",
                get(move || {
                    let gate = held.clone();
                    async move {
                        gate.acquire().await.expect("open").forget();
                        "slow"
                    }
                }),
            )
            .route("/fast", get(|| async { "fast" }))
            .route("/healthz", get(|| async { "ok" }));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        (addr, gate)
    }

    async fn send(stream: &mut TcpStream, path: &str, close: bool) -> String {
        let connection = if close { "close" } else { "keep-alive" };
        stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: {connection}\r\n\r\n").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        if close {
            stream.read_to_end(&mut answer).await.unwrap();
        } else {
            let mut chunk = [0u8; 4096];
            while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") || !answer.ends_with(b"fast") {
                let n = stream.read(&mut chunk).await.unwrap();
                assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
                answer.extend_from_slice(&chunk[..n]);
            }
        }
        String::from_utf8_lossy(&answer).into_owned()
    }

    async fn get_once(addr: SocketAddr, path: &str) -> String {
        send(&mut TcpStream::connect(addr).await.unwrap(), path, true).await
    }

    fn is_overloaded(answer: &str) -> bool {
        let lower = answer.to_ascii_lowercase();
        lower.starts_with("http/1.1 503")
            && lower.contains("content-type: application/problem+json")
            && lower.contains("retry-after: 1")
            && answer.contains(r#""code":"overloaded""#)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_requests_in_flight_one_more_is_503_overloaded_at_once_and_probes_still_answer() {
        let (addr, gate) = server(Limits { connections: 100, in_flight: 2 }).await;
        let slow: Vec<_> = (0..2).map(|_| tokio::spawn(get_once(addr, "/slow"))).collect();
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;

        let started = std::time::Instant::now();
        let refused = get_once(addr, "/fast").await;
        assert!(is_overloaded(&refused), "{refused}");
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
        assert!(get_once(addr, "/healthz").await.starts_with("HTTP/1.1 200"), "a probe is never shed");

        gate.add_permits(2);
        for answer in slow {
            assert!(answer.await.unwrap().starts_with("HTTP/1.1 200"));
        }
        assert!(get_once(addr, "/fast").await.starts_with("HTTP/1.1 200"), "taken again once the load is gone");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_open_connections_one_more_is_answered_503_overloaded_and_closed() {
        let (addr, _gate) = server(Limits { connections: 1, in_flight: 10 }).await;
        let mut held = TcpStream::connect(addr).await.unwrap();
        assert!(send(&mut held, "/fast", false).await.starts_with("HTTP/1.1 200"));

        let refused = get_once(addr, "/fast").await;
        assert!(is_overloaded(&refused), "{refused}");
        assert!(refused.to_ascii_lowercase().contains("connection: close"));
        assert!(get_once(addr, "/healthz").await.starts_with("HTTP/1.1 200"), "a probe is answered past the limit too");

        drop(held);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(get_once(addr, "/fast").await.starts_with("HTTP/1.1 200"), "taken again once a connection closed");
    }

    /// What the client reads back after sending `request` raw.
    async fn raw(addr: SocketAddr, request: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        // A request too large for hyper is answered before it is all sent.
        let _ = stream.write_all(request).await;
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_hyper_refuses_itself_is_answered_as_problem_json_and_the_server_goes_on() {
        let (addr, _gate) = server(Limits::default()).await;
        let long_target = format!("GET /fast?{} HTTP/1.1\r\nHost: test\r\n\r\n", "a".repeat(100_000));
        let huge_header = format!("GET /fast HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n", "a".repeat(1_000_000));
        let many_headers: String = (0..200).map(|i| format!("X-{i}: a\r\n")).collect();
        for (request, status, code) in [
            (b"GET /fast HTTP/1.1\r\nHost: test\r\nX-A: a\x01b\r\n\r\n".to_vec(), "400", "validation_failed"),
            (b"G\x01T /fast HTTP/1.1\r\nHost: test\r\n\r\n".to_vec(), "400", "validation_failed"),
            (b"GET /fast HTTP/7.1\r\nHost: test\r\n\r\n".to_vec(), "400", "validation_failed"),
            (long_target.into_bytes(), "414", "uri_too_long"),
            (huge_header.into_bytes(), "431", "headers_too_large"),
            (format!("GET /fast HTTP/1.1\r\nHost: test\r\n{many_headers}\r\n").into_bytes(), "431", "headers_too_large"),
        ] {
            let answer = raw(addr, &request).await;
            let (head, body) = answer.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no answer: {answer:?}"));
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{answer}");
            assert!(head.contains("content-type: application/problem+json"), "{answer}");
            let problem: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
            assert_eq!(problem["code"], code, "{answer}");
            assert_eq!(problem["status"].as_u64().unwrap().to_string(), status);
        }
        assert!(get_once(addr, "/fast").await.ends_with("fast"), "well-formed requests are answered as before");
    }
}

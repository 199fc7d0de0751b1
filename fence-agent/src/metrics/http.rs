//! The /metrics listener: hyper's HTTP/1.1 server on a loopback address.
//!
//! `GET`/`HEAD /metrics` (the text format), `GET`/`HEAD /` (an index page), 404 for other
//! paths, 405 with `Allow: GET, HEAD` for other methods; hyper answers malformed requests
//! (400) and request heads over 8 KiB (431) itself. The request head must arrive within 5 s,
//! a connection lasts at most 15 s, at most 16 connections are served at a time (more wait in
//! the listen backlog), and each connection serves one request (`Connection: close`).

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};

use super::{CONTENT_TYPE, Metrics, MetricsError};

/// Limits of the HTTP listener.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Longest request head (request line and headers); hyper's minimum is 8 KiB.
    pub(super) max_head: usize,
    /// Time allowed to send the request head.
    pub(super) head_timeout: Duration,
    /// Time a connection may last in all (head, response, and a client slow to take it).
    pub(super) connection_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub(super) max_connections: usize,
}

pub(super) const LIMITS: Limits = Limits {
    max_head: 8 * 1024,
    head_timeout: Duration::from_secs(5),
    connection_timeout: Duration::from_secs(15),
    max_connections: 16,
};

/// Binds `addr`, which must be a loopback address.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    if !addr.ip().is_loopback() {
        return Err(MetricsError::NotLoopback(addr));
    }
    TcpListener::bind(addr).await.map_err(|source| MetricsError::Listen { addr, source })
}

/// Binds `addr` (so that a bind error is reported at start) and serves the metrics on it in
/// a task of its own; abort the handle to stop.
pub async fn start(addr: SocketAddr, metrics: Metrics) -> Result<JoinHandle<()>, MetricsError> {
    let listener = bind(addr).await?;
    Ok(spawn(listener, addr, metrics))
}

/// [`start`] on any address (`[metrics] allow_remote = true`), with a warning when it is not a
/// loopback one: there is no TLS and no authentication on this listener.
pub async fn start_remote(addr: SocketAddr, metrics: Metrics) -> Result<JoinHandle<()>, MetricsError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(
            address = %addr,
            "metrics are served to the network without TLS or authentication: any host that reaches this port \
             reads identity names, policy versions and event counts (put a TLS proxy with authentication or a \
             firewall in front)"
        );
    }
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Listen { addr, source })?;
    Ok(spawn(listener, addr, metrics))
}

fn spawn(listener: TcpListener, addr: SocketAddr, metrics: Metrics) -> JoinHandle<()> {
    let local = listener.local_addr().unwrap_or(addr);
    tracing::info!(address = %local, "metrics served on http://{local}/metrics");
    tokio::spawn(serve(listener, metrics))
}

/// Accepts connections until the task is cancelled; one task per connection, at most 16 at
/// a time.
pub async fn serve(listener: TcpListener, metrics: Metrics) {
    serve_limited(listener, metrics, LIMITS).await
}

pub(super) async fn serve_limited(listener: TcpListener, metrics: Metrics, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            connection(stream, metrics, limits).await;
            drop(slot);
        });
    }
}

/// Serves one connection with hyper, within the limits.
async fn connection(stream: TcpStream, metrics: Metrics, limits: Limits) {
    let service = service_fn(move |request: Request<hyper::body::Incoming>| {
        let response = respond(&request, &metrics);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.max_head)
        .keep_alive(false)
        .title_case_headers(true)
        .serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection"),
        Err(_) => tracing::debug!("metrics connection: timed out"),
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Route {
    Metrics,
    Index,
    NotFound,
    MethodNotAllowed,
}

/// The route of a request with `method` on `path` (the query already stripped).
pub(super) fn route(method: &Method, path: &str) -> Route {
    if method != Method::GET && method != Method::HEAD {
        return Route::MethodNotAllowed;
    }
    match path {
        "/metrics" => Route::Metrics,
        "/" => Route::Index,
        _ => Route::NotFound,
    }
}

const INDEX: &str = "<html><head><title>fence-agent</title></head><body><h1>fence-agent</h1>\
                     <p><a href=\"/metrics\">Metrics</a></p></body></html>\n";
const TEXT: &str = "text/plain; charset=utf-8";

/// The response to `request`; hyper leaves the body out for HEAD requests.
fn respond<B>(request: &Request<B>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match route(request.method(), request.uri().path()) {
        Route::Metrics => (StatusCode::OK, CONTENT_TYPE, Bytes::from(metrics.scrape())),
        Route::Index => (StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(INDEX.as_bytes())),
        Route::NotFound => (StatusCode::NOT_FOUND, TEXT, Bytes::from_static(b"404 Not Found: try /metrics\n")),
        Route::MethodNotAllowed => {
            (StatusCode::METHOD_NOT_ALLOWED, TEXT, Bytes::from_static(b"405 Method Not Allowed\n"))
        }
    };
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

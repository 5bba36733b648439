//! Accepting connections for every port kiln listens on: optional TLS (rustls), a cap on open
//! connections, header size and read-time limits, and a graceful drain with a deadline.
//!
//! axum and tonic only see requests; everything about sockets lives here, so REST, gRPC and
//! the metrics port behave the same way under hostile clients and at shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;

use crate::deadlines::{Activity, BodyDeadline, Busy, BusyBody, TimedBody};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

/// Connection-level limits shared by all ports.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Open connections per port; connections beyond it are closed at once.
    pub max_connections: usize,
    /// Largest request head (HTTP/1 request line + headers, HTTP/2 header list); beyond it
    /// HTTP/1 answers 431 and HTTP/2 resets the stream.
    pub max_header_bytes: usize,
    /// Time a client has to send a request's headers (HTTP/1) and to finish the TLS handshake.
    pub header_timeout: Duration,
    /// Time a request's whole body may take to arrive after its headers (a ModelStreamInfer
    /// stream's messages are timed by `idle_timeout` instead).
    pub body_timeout: Duration,
    /// A connection with no request in progress this long is closed gracefully.
    pub idle_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: 4096,
            max_header_bytes: 64 * 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            max_concurrent_streams: 1024,
        }
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("TLS certificate and key do not work together: {0}")]
    Config(#[from] rustls::Error),
}

/// A loaded server certificate chain and private key (PEM files).
#[derive(Clone)]
pub struct TlsFiles {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsFiles")
    }
}

impl TlsFiles {
    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let read = |path: &Path| std::fs::read(path).map_err(|source| TlsError::Read { path: path.into(), source });
        let pem_error = |path: &Path, message: String| TlsError::Pem { path: path.into(), message };
        let cert_pem = read(cert)?;
        let certs = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, format!("not a PEM certificate chain: {e}")))?;
        if certs.is_empty() {
            return Err(pem_error(cert, "holds no CERTIFICATE block".into()));
        }
        let key_pem = read(key)?;
        let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| pem_error(key, format!("not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key_der)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsFiles { config: Arc::new(config) })
    }

    fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.config.clone())
    }
}

/// Which HTTP versions a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Http {
    /// REST and metrics: HTTP/1.1, and HTTP/2 for clients that ask.
    Any,
    /// gRPC: HTTP/2 only.
    Two,
}

/// How the drain of one port ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Every connection finished its requests and closed.
    Clean,
    /// The deadline passed with connections still open; they were cut.
    Cut,
}

/// The path of the one bidirectional streaming call, whose request body is a stream of messages
/// that may pause between them.
const STREAM_INFER_PATH: &str = "/inference.GRPCInferenceService/ModelStreamInfer";

/// `app` for one connection: each request's body gets its deadline, and the request counts as
/// in progress on the connection until its response body is dropped.
#[derive(Clone)]
struct TimedApp {
    app: axum::Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
    idle_timeout: Duration,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for TimedApp {
    type Response = hyper::Response<BusyBody<axum::body::Body>>;
    type Error = std::convert::Infallible;
    type Future = TimedCall;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> TimedCall {
        use tower_service::Service as _;
        let busy = self.activity.begin();
        let deadline = if request.uri().path() == STREAM_INFER_PATH {
            BodyDeadline::BetweenFrames(self.idle_timeout)
        } else {
            BodyDeadline::Total(self.body_timeout)
        };
        let request = request.map(|body| axum::body::Body::new(TimedBody::new(body, deadline)));
        // A Router is always ready (axum's Service::poll_ready answers Ready at once).
        TimedCall { inner: self.app.clone().call(request), busy: Some(busy) }
    }
}

pin_project_lite::pin_project! {
    /// [`TimedApp`]'s answer: the route's, with the connection's busy mark moved into the
    /// response body.
    struct TimedCall {
        #[pin]
        inner: axum::routing::future::RouteFuture<std::convert::Infallible>,
        busy: Option<Busy>,
    }
}

impl Future for TimedCall {
    type Output = Result<hyper::Response<BusyBody<axum::body::Body>>, std::convert::Infallible>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.inner.poll(cx))?;
        let busy = this.busy.take().expect("TimedCall polled after it finished");
        std::task::Poll::Ready(Ok(response.map(|body| BusyBody::new(body, busy))))
    }
}

/// Serves `app` on `listener` until `stop` turns true, then stops accepting, asks every
/// connection to finish (HTTP/1 closes after the response in progress, HTTP/2 sends GOAWAY)
/// and waits up to `drain` for them.
pub(crate) async fn serve(
    listener: TcpListener,
    app: axum::Router,
    http: Http,
    tls: Option<TlsFiles>,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
    drain: Duration,
) -> Drained {
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // hyper's smallest read buffer is 8 KiB; the head must fit into it.
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(limits.max_concurrent_streams);
    if http == Http::Two {
        builder = builder.http2_only();
    }
    let builder = Arc::new(builder);
    let acceptor = tls.as_ref().map(TlsFiles::acceptor);
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let connections = Arc::new(Connections::default());
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|&s| s) => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, _peer) = match accepted {
            Ok(pair) => pair,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(port, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            metrics::counter!("kiln_connections_rejected_total", "port" => port.to_string()).increment(1);
            tracing::debug!(port, limit = limits.max_connections, "connection refused: too many open connections");
            drop(tcp);
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY: {e}");
        }
        let activity = Activity::new();
        let service = TimedApp {
            app: app.clone(),
            activity: activity.clone(),
            body_timeout: limits.body_timeout,
            idle_timeout: limits.idle_timeout,
        };
        let builder = builder.clone();
        let open = connections.open();
        let stop = stop.clone();
        let acceptor = acceptor.clone();
        let (handshake_timeout, idle_timeout) = (limits.header_timeout, limits.idle_timeout);
        tokio::spawn(async move {
            let (_permit, _open) = (permit, open);
            let result = match acceptor {
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tcp), service);
                    until_closed(conn, stop, &activity, idle_timeout).await
                }
                Some(acceptor) => {
                    let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(port, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(port, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    until_closed(conn, stop, &activity, idle_timeout).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(port, "connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    let open = connections.count();
    if open > 0 {
        tracing::info!(port, connections = open, "draining connections");
    }
    match tokio::time::timeout(drain, connections.all_closed()).await {
        Ok(()) => Drained::Clean,
        Err(_) => Drained::Cut,
    }
}

/// Serves one connection to its end. It is asked to close gracefully (HTTP/1: after the
/// response in progress; HTTP/2: GOAWAY, streams in flight finish) when the server stops or when
/// it has had no request in progress for `idle`.
async fn until_closed<C, E>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    activity: &Activity,
    idle: Duration,
) -> Result<(), E>
where
    C: Future<Output = Result<(), E>> + GracefulClose,
{
    tokio::pin!(conn);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = stop.wait_for(|&s| s), if !closing => {
                closing = true;
                conn.as_mut().close_gracefully();
            }
            () = activity.idle_for_at_least(idle), if !closing => {
                tracing::debug!(idle_ms = idle.as_millis() as u64, "closing an idle connection");
                closing = true;
                conn.as_mut().close_gracefully();
            }
        }
    }
}

/// A connection that can be asked to finish what it is doing and close.
trait GracefulClose {
    fn close_gracefully(self: std::pin::Pin<&mut Self>);
}

impl<I, S, E, B> GracefulClose for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = hyper::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn close_gracefully(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// The open connections of one port (RAII: each connection task holds an [`OpenConnection`]).
#[derive(Default)]
struct Connections {
    count: std::sync::atomic::AtomicUsize,
    closed: tokio::sync::Notify,
}

impl Connections {
    fn open(self: &Arc<Self>) -> OpenConnection {
        self.count.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        OpenConnection(self.clone())
    }

    fn count(&self) -> usize {
        self.count.load(std::sync::atomic::Ordering::Acquire)
    }

    async fn all_closed(&self) {
        loop {
            let closed = self.closed.notified();
            if self.count() == 0 {
                return;
            }
            closed.await;
        }
    }
}

struct OpenConnection(Arc<Connections>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

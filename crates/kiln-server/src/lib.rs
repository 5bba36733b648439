//! kiln-server: the network front of kiln.
//!
//! It owns the KServe v2 / Open Inference Protocol over REST ([`rest`]) and its wire
//! encoding ([`v2`]: JSON tensors and the binary tensor extension), and maps the engine's
//! typed errors to status codes. Only this crate speaks protocols; it runs no model itself
//! and calls the one cloneable [`kiln_engine::Engine`] handle.

pub mod rest;
pub mod v2;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::serve::ListenerExt;
use kiln_engine::Engine;

/// Network settings of `kiln serve`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to bind, 127.0.0.1 unless the operator chooses otherwise.
    pub host: String,
    /// REST port; 0 picks a free one (tests).
    pub http_port: u16,
    /// Largest request body accepted.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { host: "127.0.0.1".into(), http_port: 8000, max_body_bytes: 64 * 1024 * 1024 }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound, not yet running server: lets callers learn the real port before serving.
pub struct BoundServer {
    listener: tokio::net::TcpListener,
    state: rest::AppState,
}

impl BoundServer {
    /// Binds the REST listener.
    pub async fn bind(config: &ServerConfig, engine: Engine) -> Result<Self, ServerError> {
        let addr = format!("{}:{}", config.host, config.http_port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind { addr: addr.clone(), source })?;
        let state =
            rest::AppState { engine, max_body_bytes: config.max_body_bytes, ready: Arc::new(AtomicBool::new(true)) };
        Ok(BoundServer { listener, state })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, answers the requests in
    /// flight and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let ready = self.state.ready.clone();
        let app = rest::router(self.state);
        // Small request/response exchanges: do not let Nagle's algorithm hold them back.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("cannot set TCP_NODELAY: {e}");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                shutdown.await;
                ready.store(false, Ordering::Relaxed);
                tracing::info!("shutting down: no new connections, finishing requests in flight");
            })
            .await?;
        Ok(())
    }
}

//! kiln-server: the network front of kiln.
//!
//! It serves the KServe v2 / Open Inference Protocol over REST ([`rest`]) and gRPC
//! ([`grpc`]) and the OpenAI-compatible endpoints (`rest::openai`), with the wire encodings of
//! `kiln-protocol`. Every inference route decodes its wire format and calls the one lifecycle
//! in [`infer`]; every error becomes a status code in [`error`] only. It is the only crate
//! that listens on sockets; it runs no model itself and calls the one cloneable
//! [`kiln_engine::Engine`] handle held in [`state::AppState`].

pub mod auth;
pub mod classification;
pub mod deadlines;
pub mod error;
pub mod grpc;
pub mod infer;
pub mod limits;
pub mod live;
mod model_config;
pub mod openapi;
pub mod otel;
pub mod points;
pub mod records;
pub mod rest;
pub mod state;
pub mod transport;

pub use kiln_protocol::{proto, v2};
pub use state::{EXTENSIONS, MetricsRender};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_engine::Engine;

/// Network settings of `kiln serve`.
#[derive(Clone)]
pub struct ServerConfig {
    /// Address to bind, 127.0.0.1 unless the operator chooses otherwise.
    pub host: String,
    /// REST port; 0 picks a free one (tests).
    pub http_port: u16,
    /// gRPC port; 0 picks a free one (tests).
    pub grpc_port: u16,
    /// What one request may hold (body/message size, tensor elements, rows, string length).
    pub limits: limits::RequestLimits,
    /// Open connections and header limits, per port.
    pub connections: transport::ConnectionLimits,
    /// Serve every port over TLS with this certificate; `None` = plain TCP.
    pub tls: Option<transport::TlsFiles>,
    /// Bearer tokens (re-read when the file changes); `None` = no authentication.
    pub auth: Option<Arc<auth::TokenFile>>,
    /// How often the token file is checked for changes.
    pub auth_reload: std::time::Duration,
    /// What happens between the shutdown signal and exit.
    pub shutdown: ShutdownConfig,
    /// A port serving only `GET /metrics` (Triton's 8002); `None` = no separate port.
    pub metrics_port: Option<u16>,
    /// Renders the Prometheus text exposition; `None` = metrics off (404).
    pub metrics: Option<MetricsRender>,
    /// The prediction log; `None` = records off.
    pub records: Option<kiln_records::RecorderConfig>,
    /// Serve the web dashboard at `GET /` (and sample live figures for it).
    pub dashboard: bool,
    /// The durable store of collections' points (`sqlite:PATH` or `postgres://…`); `None` =
    /// points live in memory only (a collection folder's points file, then what is upserted).
    pub points: Option<String>,
    /// How often a replica applies points that others committed.
    pub points_follow: std::time::Duration,
    /// OpenTelemetry trace export; `None` = off.
    pub otlp: Option<otel::OtlpConfig>,
}

/// Graceful shutdown: readiness turns false first, then the listeners close and the requests
/// in flight (queued ones included) are answered within `drain`.
#[derive(Debug, Clone, Copy)]
pub struct ShutdownConfig {
    /// Time between readiness turning false and the listeners closing, during which requests
    /// are still served (load balancers need a few probe periods to notice).
    pub delay: std::time::Duration,
    /// Deadline for the requests in flight once the listeners are closed.
    pub drain: std::time::Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { delay: std::time::Duration::ZERO, drain: std::time::Duration::from_secs(30) }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            http_port: 8000,
            grpc_port: 8001,
            limits: limits::RequestLimits::default(),
            connections: transport::ConnectionLimits::default(),
            tls: None,
            auth: None,
            auth_reload: std::time::Duration::from_secs(10),
            shutdown: ShutdownConfig::default(),
            metrics_port: None,
            metrics: None,
            records: None,
            dashboard: true,
            points: None,
            points_follow: std::time::Duration::from_millis(250),
            otlp: None,
        }
    }
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}")]
    Bind { addr: String, source: std::io::Error },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("prediction log: {0}")]
    Records(#[from] kiln_records::RecordsError),
    #[error("requests still in flight when the {0:?} drain deadline passed; they were cut")]
    DrainTimeout(std::time::Duration),
    #[error("traces: {0}")]
    Tracing(String),
}

/// Only collections need the points store: without one, no database file is made.
fn state_has_no_collections(engine: &Engine) -> bool {
    engine.collections().is_empty()
}

/// A bound, not yet running server: lets callers learn the real ports before serving.
pub struct BoundServer {
    http: tokio::net::TcpListener,
    grpc: tokio::net::TcpListener,
    metrics: Option<tokio::net::TcpListener>,
    state: state::AppState,
    config: ServerConfig,
}

async fn bind(host: &str, port: u16) -> Result<tokio::net::TcpListener, ServerError> {
    let addr = format!("{host}:{port}");
    tokio::net::TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, source })
}

impl BoundServer {
    /// Binds the REST and gRPC listeners and opens the prediction log.
    pub async fn bind(config: &ServerConfig, engine: Engine) -> Result<Self, ServerError> {
        let records = match &config.records {
            Some(c) => Some(kiln_records::Recorder::open(c.clone()).await?),
            None => None,
        };
        let points = match &config.points {
            Some(url) if !state_has_no_collections(&engine) => {
                Some(kiln_records::points::PointStore::connect(url).await?)
            }
            _ => None,
        };
        points::load_all(points.as_ref(), &engine).await;
        points::install(points.clone(), &engine);
        let http = bind(&config.host, config.http_port).await?;
        let grpc = bind(&config.host, config.grpc_port).await?;
        let metrics = match config.metrics_port {
            Some(port) => Some(bind(&config.host, port).await?),
            None => None,
        };
        let tracer = match &config.otlp {
            Some(otlp) => otel::Tracer::start(otlp).map_err(ServerError::Tracing)?,
            None => otel::Tracer::off(),
        };
        let state = state::AppState {
            tracer,
            engine,
            limits: config.limits.clone(),
            ready: Arc::new(AtomicBool::new(true)),
            metrics: config.metrics.clone(),
            records,
            points,
            live: config.dashboard.then(|| {
                live::LiveStats::new(std::time::Duration::from_secs(2), std::time::Duration::from_secs(15 * 60))
            }),
        };
        Ok(BoundServer { http, grpc, metrics, state, config: config.clone() })
    }

    /// The REST address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// The metrics address actually bound, when there is a separate metrics port.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The gRPC address actually bound.
    pub fn grpc_addr(&self) -> std::io::Result<SocketAddr> {
        self.grpc.local_addr()
    }

    /// Serves REST and gRPC until `shutdown` resolves; then readiness turns false, after
    /// `shutdown.delay` the listeners close, the requests in flight are answered (within
    /// `shutdown.drain`) and the prediction log is flushed.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let BoundServer { http, grpc, metrics, state, config } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let ready = state.ready.clone();
        let delay = config.shutdown.delay;
        tokio::spawn(async move {
            shutdown.await;
            ready.store(false, Ordering::Relaxed);
            if !delay.is_zero() {
                tracing::info!(delay_ms = delay.as_millis() as u64, "shutting down: not ready; still serving");
                tokio::time::sleep(delay).await;
            }
            tracing::info!("shutting down: no new connections, finishing requests in flight");
            let _ = stop_tx.send(true);
        });
        let poller = state.engine.spawn_poller();
        let follower =
            state.points.clone().map(|store| points::spawn_follower(store, state.engine.clone(), config.points_follow));
        let sampler = state.live.as_ref().map(|live| live.spawn(state.engine.clone()));
        let token_watcher = config.auth.as_ref().map(|tokens| tokens.spawn_watcher(config.auth_reload));

        let with_auth = |router: axum::Router, grpc: bool| match &config.auth {
            None => router,
            Some(auth) if grpc => router.layer(axum::middleware::from_fn_with_state(auth.clone(), grpc::auth_layer)),
            Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth.clone(), rest::auth_layer)),
        };
        let port = |listener, app, http| {
            transport::serve(
                listener,
                app,
                http,
                config.tls.clone(),
                config.connections.clone(),
                stop_rx.clone(),
                config.shutdown.drain,
            )
        };
        let rest = port(http, with_auth(rest::router(state.clone()), false), transport::Http::Any);
        let metrics = metrics.map(|listener| {
            tokio::spawn(port(listener, with_auth(rest::metrics_router(state.clone()), false), transport::Http::Any))
        });
        let grpc = port(grpc, with_auth(grpc_router(&state).await?, true), transport::Http::Two);

        let (rest, grpc) = tokio::join!(rest, grpc);
        for task in [poller, sampler, token_watcher, follower].into_iter().flatten() {
            task.abort();
        }
        let metrics = match metrics {
            Some(task) => task.await.unwrap_or(transport::Drained::Clean),
            None => transport::Drained::Clean,
        };
        // Streams still generating were cut with their connections: end the LLM schedulers
        // (at most one step) before the process exits under them.
        let _ = tokio::task::spawn_blocking(stop_llms).await;
        if let Some(records) = &state.records {
            // Every request is answered: write what the log still holds before exiting.
            if records.flush(std::time::Duration::from_secs(30)).await {
                tracing::info!("prediction log flushed");
            } else {
                tracing::error!("prediction log: rows still unwritten at shutdown (database unreachable)");
            }
        }
        // The last requests' spans: sent now rather than lost with the export task.
        if !state.tracer.flush(std::time::Duration::from_secs(5)).await {
            tracing::warn!("traces: the last spans could not be sent before exiting");
        }
        if [rest, grpc, metrics].contains(&transport::Drained::Cut) {
            return Err(ServerError::DrainTimeout(config.shutdown.drain));
        }
        Ok(())
    }
}

/// Ends every LLM scheduler thread (see `kiln_llm::stop_all`); [`BoundServer::serve`] does it
/// after draining. Blocking: at most one decode step.
pub fn stop_llms() {
    kiln_llm::stop_all();
}

/// The gRPC services (v2 inference, gRPC health, reflection) as one router.
async fn grpc_router(state: &state::AppState) -> Result<axum::Router, ServerError> {
    type Inference = proto::grpc_inference_service_server::GrpcInferenceServiceServer<grpc::InferenceService>;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<Inference>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let inference = Inference::new(grpc::InferenceService::new(state))
        .max_decoding_message_size(state.limits.max_body_bytes)
        .max_encoding_message_size(usize::MAX);
    let routes = tonic::service::Routes::new(health_service).add_service(reflection).add_service(inference);
    Ok(routes.prepare().into_axum_router())
}

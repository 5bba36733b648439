//! `kiln serve`: its flags, and the server's start (runtime, engine, prediction log, points
//! store, metrics, listeners) and drain on SIGTERM.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use kiln_engine::{Engine, EngineConfig, ModelControl};
use kiln_server::{BoundServer, ServerConfig};

use crate::{ModelControlArg, Switch, start_runtime};

#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// The model repository folder.
    #[arg(default_value = "models", env = "KILN_REPOSITORY")]
    repository: PathBuf,
    /// Address to listen on. 127.0.0.1 keeps kiln private to this machine; use 0.0.0.0 to
    /// accept connections from elsewhere.
    #[arg(long, env = "KILN_HOST", default_value = "127.0.0.1")]
    host: String,
    /// REST (KServe v2 HTTP) port; 0 picks a free port.
    #[arg(long, env = "KILN_HTTP_PORT", default_value_t = 8000)]
    http_port: u16,
    /// gRPC (KServe v2 `inference.GRPCInferenceService`) port; 0 picks a free port.
    #[arg(long, env = "KILN_GRPC_PORT", default_value_t = 8001)]
    grpc_port: u16,
    /// How the served models may change while running: `none` (load everything at start),
    /// `poll` (rescan the repository and apply changes), `explicit` (load/unload on request
    /// through the repository API).
    #[arg(long, env = "KILN_MODEL_CONTROL", value_enum, default_value_t = ModelControlArg::None)]
    model_control: ModelControlArg,
    /// Poll mode: seconds between repository scans.
    #[arg(long, env = "KILN_POLL_INTERVAL_SECS", default_value_t = 5.0)]
    poll_interval_secs: f64,
    /// Explicit mode: a model to load at start (repeatable; `*` = all).
    #[arg(long = "load-model", env = "KILN_LOAD_MODELS", value_delimiter = ',')]
    load_models: Vec<String>,
    /// Port of a listener that serves only `GET /metrics` (Prometheus text; also on the REST
    /// port). 0 picks a free port.
    #[arg(long, env = "KILN_METRICS_PORT", default_value_t = 8002)]
    metrics_port: u16,
    /// Collect and expose Prometheus metrics (`on`) or not (`off`).
    #[arg(long, env = "KILN_METRICS", value_enum, default_value_t = Switch::On)]
    metrics: Switch,
    /// The web dashboard at http(s)://HOST:HTTP_PORT/ (`on`) or not (`off`): models,
    /// pipelines, live latency, a try-it form, recent predictions and quality.
    #[arg(long, env = "KILN_DASHBOARD", value_enum, default_value_t = Switch::On)]
    dashboard: Switch,
    /// Largest request body (REST) or message (gRPC) accepted; larger ones get 413 /
    /// RESOURCE_EXHAUSTED.
    #[arg(long, env = "KILN_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024, help_heading = "Limits")]
    max_body_bytes: usize,
    /// Most elements in one input tensor (400 beyond).
    #[arg(long, env = "KILN_MAX_TENSOR_ELEMENTS", default_value_t = 16 * 1024 * 1024, help_heading = "Limits")]
    max_tensor_elements: usize,
    /// Most rows (first dimension) in one input tensor, and texts in one embeddings request.
    #[arg(long, env = "KILN_MAX_BATCH_ROWS", default_value_t = 65_536, help_heading = "Limits")]
    max_batch_rows: usize,
    /// Longest string (one BYTES element or embeddings text), in bytes.
    #[arg(long, env = "KILN_MAX_STRING_BYTES", default_value_t = 1024 * 1024, help_heading = "Limits")]
    max_string_bytes: usize,
    /// Largest payload of one vector-collection point (its JSON text), in bytes; larger points
    /// are refused (413) — payloads are held in memory with every point.
    #[arg(long, env = "KILN_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024, help_heading = "Limits")]
    max_payload_bytes: usize,
    /// Open connections per port; more are closed at once (and counted in
    /// kiln_connections_rejected_total).
    #[arg(long, env = "KILN_MAX_CONNECTIONS", default_value_t = 4096, help_heading = "Limits")]
    max_connections: usize,
    /// Largest request head: HTTP/1 request line + headers (431 beyond), HTTP/2 header list.
    #[arg(long, env = "KILN_MAX_HEADER_BYTES", default_value_t = 64 * 1024, help_heading = "Limits")]
    max_header_bytes: usize,
    /// Seconds a client has to finish the TLS handshake and send a request's headers; also how
    /// long a kept-alive HTTP/1 connection may sit idle before kiln closes it.
    #[arg(long, env = "KILN_HEADER_TIMEOUT_SECS", default_value_t = 10.0, help_heading = "Limits")]
    header_timeout_secs: f64,
    /// Seconds a client has to send a request's whole body once its headers are in; past it
    /// the request is refused (408) and its connection closed, so a stalled upload cannot hold
    /// a connection. A gRPC ModelStreamInfer stream is timed by --idle-timeout-secs between
    /// messages instead.
    #[arg(long, env = "KILN_BODY_TIMEOUT_SECS", default_value_t = 30.0, help_heading = "Limits")]
    body_timeout_secs: f64,
    /// Seconds a connection (HTTP/1 or HTTP/2, gRPC included) may stay open with no request in
    /// progress before kiln closes it gracefully (GOAWAY on HTTP/2).
    #[arg(long, env = "KILN_IDLE_TIMEOUT_SECS", default_value_t = 300.0, help_heading = "Limits")]
    idle_timeout_secs: f64,
    /// PEM certificate chain: serve REST, gRPC and metrics over TLS (needs --tls-key).
    #[arg(long, env = "KILN_TLS_CERT", requires = "tls_key", help_heading = "Security")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "KILN_TLS_KEY", requires = "tls_cert", help_heading = "Security")]
    tls_key: Option<PathBuf>,
    /// Require bearer tokens: a file of `NAME SCOPES TOKEN` lines, SCOPES = inference, admin or
    /// inference,admin. `admin` (which includes inference) guards the repository API, the
    /// prediction log, feedback and metrics. Re-read when it changes (see --auth-reload-secs);
    /// a changed file that does not parse keeps the tokens in use.
    #[arg(long, env = "KILN_AUTH_TOKEN_FILE", help_heading = "Security")]
    auth_token_file: Option<PathBuf>,
    /// Seconds between checks of --auth-token-file for changes (token rotation).
    #[arg(long, env = "KILN_AUTH_RELOAD_SECS", default_value_t = 10.0, help_heading = "Security")]
    auth_reload_secs: f64,
    /// With --auth-token-file: endpoints open without a token (`health`: liveness/readiness
    /// for probes; `metrics`; `none`).
    #[arg(
        long,
        env = "KILN_AUTH_PUBLIC",
        value_enum,
        value_delimiter = ',',
        default_value = "health",
        help_heading = "Security"
    )]
    auth_public: Vec<PublicEndpoint>,
    /// On SIGTERM/SIGINT: seconds to keep serving with readiness false before closing the
    /// listeners (give load balancers time to notice; e.g. 5 on Kubernetes).
    #[arg(long, env = "KILN_SHUTDOWN_DELAY_SECS", default_value_t = 0.0, help_heading = "Shutdown")]
    shutdown_delay_secs: f64,
    /// On SIGTERM/SIGINT: seconds to answer the requests in flight once the listeners are
    /// closed; past it they are cut and kiln exits 1. A second signal exits at once.
    #[arg(long, env = "KILN_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30.0, help_heading = "Shutdown")]
    shutdown_timeout_secs: f64,
    /// The prediction log: `sqlite:PATH` (embedded; default: REPO.records.sqlite beside the
    /// repository), `postgres://USER[:PASSWORD]@HOST[:PORT]/DB` (several replicas share it), or
    /// `off`.
    #[arg(long, env = "KILN_RECORDS")]
    records: Option<String>,
    /// `async`: answers never wait for the log (rows queue; dropped and counted only under
    /// sustained overload). `durable`: an answer is sent once its row is committed.
    #[arg(long, env = "KILN_RECORDS_MODE", value_enum, default_value_t = RecordsMode::Async)]
    records_mode: RecordsMode,
    /// How long the prediction log keeps a row: a number with s, m, h or d (e.g. 7d, 12h), or
    /// `off`. Older rows (and feedback) are deleted by the log's writer in small batches.
    #[arg(long, env = "KILN_RECORDS_RETENTION", default_value = "7d", value_parser = parse_age)]
    records_retention: OrOff<Duration>,
    /// Most bytes of data the prediction log keeps (e.g. 2GiB, 500MB, or `off`); past 95 % of
    /// it the oldest rows are deleted down to 85 %. See docs/records.md for sizing.
    #[arg(long, env = "KILN_RECORDS_MAX_BYTES", default_value = "2GiB", value_parser = parse_bytes)]
    records_max_bytes: OrOff<u64>,
    /// Memory for all LLMs together (e.g. 2GiB; default: none): each loads on its first request
    /// (or at start, when it fits), and the least recently used idle one unloads when another
    /// needs the room; a request that finds every loaded model busy gets 503 with the reason.
    /// Counted per model: its file, the KV cache of its sequence slots, buffers.
    #[arg(long, env = "KILN_LLM_MEMORY_BUDGET", value_parser = parse_bytes, help_heading = "LLMs")]
    llm_memory_budget: Option<OrOff<u64>>,
    /// Where vector collections (`kind = "vector_index"`) keep their points: `sqlite:PATH`
    /// (embedded; default: REPO.points.sqlite beside the repository), `postgres://…` (replicas
    /// share it and follow each other's writes), or `off` (memory only: upserts are lost on
    /// exit). Opened only when the repository has a collection.
    #[arg(long, env = "KILN_POINTS", help_heading = "Collections")]
    points: Option<String>,
    /// How often a replica applies points other replicas committed, in milliseconds.
    #[arg(long, env = "KILN_POINTS_FOLLOW_MS", default_value_t = 250, help_heading = "Collections")]
    points_follow_ms: u64,
    /// Export OpenTelemetry traces over OTLP to this collector (e.g. http://127.0.0.1:4317 for
    /// gRPC, http://127.0.0.1:4318 for HTTP; default: off). Export never delays a request: a
    /// slow or dead collector loses spans (kiln_trace_spans_dropped_total), not time.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", help_heading = "Traces")]
    otlp_endpoint: Option<String>,
    /// OTLP transport: grpc or http/protobuf.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc", help_heading = "Traces")]
    otlp_protocol: kiln_server::otel::OtlpProtocol,
    /// Share of new traces sampled, 0 to 1; a caller's `traceparent` sampled flag decides for
    /// its own requests.
    #[arg(long, env = "KILN_TRACE_SAMPLE_RATIO", default_value_t = 1.0, help_heading = "Traces")]
    trace_sample_ratio: f64,
    /// The spans' `service.name`.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "kiln", help_heading = "Traces")]
    otel_service_name: String,
}

/// A flag value that may be `off` (clap needs a type of its own for that: a plain `Option`
/// field means "flag absent").
#[derive(Debug, Clone, Copy, PartialEq)]
struct OrOff<T>(Option<T>);

/// `7d`, `12h`, `30m`, `90s` or `off`.
fn parse_age(text: &str) -> Result<OrOff<Duration>, String> {
    if text == "off" {
        return Ok(OrOff(None));
    }
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit_secs = match unit {
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86_400.0,
        _ => return Err(format!("'{text}' is not an age: use a number with s, m, h or d (e.g. 7d), or off")),
    };
    let value: f64 = number.parse().map_err(|_| format!("'{text}' does not start with a number"))?;
    let secs = value * unit_secs;
    if !(secs > 0.0 && secs <= MAX_FLAG_SECONDS) {
        return Err(format!("'{text}' must be more than 0 and at most {MAX_FLAG_SECONDS:e} seconds"));
    }
    Ok(OrOff(Some(Duration::from_secs_f64(secs))))
}

/// `2GiB`, `500MB`, `64KiB`, a plain number of bytes, or `off`.
fn parse_bytes(text: &str) -> Result<OrOff<u64>, String> {
    if text == "off" {
        return Ok(OrOff(None));
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KB" => 1000,
        "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "TiB" => 1 << 40,
        _ => return Err(format!("'{text}' is not a size: use e.g. 2GiB, 500MB, 1048576, or off")),
    };
    let value: u64 = number.parse().map_err(|_| format!("'{text}' does not start with a whole number"))?;
    match value.checked_mul(scale) {
        Some(0) | None => Err(format!("'{text}' must be more than 0 and fit in 64 bits")),
        Some(bytes) => Ok(OrOff(Some(bytes))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum PublicEndpoint {
    Health,
    Metrics,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum RecordsMode {
    Async,
    Durable,
}

/// `--points` resolved: `None` = memory only.
fn points_url(args: &ServeArgs) -> Option<String> {
    match args.points.as_deref() {
        Some("off") => None,
        Some(url) => Some(url.to_string()),
        None => {
            let repo = args.repository.canonicalize().unwrap_or_else(|_| args.repository.clone());
            let name = repo.file_name().map_or_else(|| "kiln".into(), |n| n.to_string_lossy().into_owned());
            let path = repo.parent().unwrap_or(std::path::Path::new(".")).join(format!("{name}.points.sqlite"));
            Some(format!("sqlite:{}", path.display()))
        }
    }
}

/// `--records` resolved: `None` = off.
fn records_config(args: &ServeArgs) -> Option<kiln_records::RecorderConfig> {
    let url = match args.records.as_deref() {
        Some("off") => return None,
        Some(url) => url.to_string(),
        None => {
            let repo = args.repository.canonicalize().unwrap_or_else(|_| args.repository.clone());
            let name = repo.file_name().map_or_else(|| "kiln".into(), |n| n.to_string_lossy().into_owned());
            let path = repo.parent().unwrap_or(std::path::Path::new(".")).join(format!("{name}.records.sqlite"));
            format!("sqlite:{}", path.display())
        }
    };
    let mode = match args.records_mode {
        RecordsMode::Async => kiln_records::WriteMode::Async,
        RecordsMode::Durable => kiln_records::WriteMode::Durable,
    };
    let mut config = kiln_records::RecorderConfig::new(&url, mode);
    config.retention =
        kiln_records::Retention { max_age: args.records_retention.0, max_bytes: args.records_max_bytes.0 };
    Some(config)
}

/// Longest time any flag may say (about 31 years): larger values overflow deadlines.
const MAX_FLAG_SECONDS: f64 = 1e9;

/// A flag's seconds as a `Duration`: a finite number from 0 to [`MAX_FLAG_SECONDS`].
pub(crate) fn seconds(value: f64, flag: &str) -> Result<Duration> {
    if !(0.0..=MAX_FLAG_SECONDS).contains(&value) {
        bail!("{flag} must be a number of seconds from 0 to {MAX_FLAG_SECONDS:e}, not {value}");
    }
    Ok(Duration::try_from_secs_f64(value)?)
}

/// Like [`seconds`], and more than zero (a zero deadline would refuse every request).
fn positive_seconds(value: f64, flag: &str) -> Result<Duration> {
    let d = seconds(value, flag)?;
    if d.is_zero() {
        bail!("{flag} must be more than 0");
    }
    Ok(d)
}

pub(crate) fn serve(onnxruntime: Option<&Path>, args: ServeArgs) -> Result<()> {
    let started = Instant::now();
    start_runtime(onnxruntime)?;
    if !args.repository.is_dir() {
        bail!(
            "model repository {} is not a folder; expected REPO/<model>/<version>/model.onnx (try `kiln serve examples/models`)",
            args.repository.display()
        );
    }
    // Before any model loads: models register their metric handles when they start.
    let metrics = (args.metrics == Switch::On).then(install_metrics).transpose()?;
    let control = match args.model_control {
        ModelControlArg::None => ModelControl::None,
        ModelControlArg::Poll => {
            let interval = seconds(args.poll_interval_secs, "--poll-interval-secs")?;
            if interval < Duration::from_millis(50) {
                bail!("--poll-interval-secs must be at least 0.05");
            }
            ModelControl::Poll { interval }
        }
        ModelControlArg::Explicit => ModelControl::Explicit,
    };
    if let Some(OrOff(Some(bytes))) = args.llm_memory_budget {
        kiln_llm::set_memory_budget(bytes)?;
    }
    let engine = Engine::start(EngineConfig {
        repository: args.repository.clone(),
        control,
        startup_models: args.load_models.clone(),
        points_store: points_url(&args).is_some(),
    })?;
    let index = engine.index();
    let ready = index.iter().filter(|r| r.ready).count();
    tracing::info!(
        repository = %args.repository.display(),
        ready,
        failed = index.len() - ready,
        "model repository loaded"
    );
    let records = records_config(&args);
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(kiln_server::transport::TlsFiles::load(cert, key)?),
        _ => None,
    };
    let auth = match &args.auth_token_file {
        Some(path) => {
            let public: Vec<kiln_server::auth::Access> = args
                .auth_public
                .iter()
                .filter_map(|p| match p {
                    PublicEndpoint::Health => Some(kiln_server::auth::Access::Health),
                    PublicEndpoint::Metrics => Some(kiln_server::auth::Access::Metrics),
                    PublicEndpoint::None => None,
                })
                .collect();
            Some(std::sync::Arc::new(kiln_server::auth::TokenFile::open(path, &public)?))
        }
        None => None,
    };
    if args.max_connections == 0 || args.max_tensor_elements == 0 || args.max_batch_rows == 0 {
        bail!("--max-connections, --max-tensor-elements and --max-batch-rows must be at least 1");
    }
    let points = points_url(&args);
    let config = ServerConfig {
        host: args.host,
        http_port: args.http_port,
        grpc_port: args.grpc_port,
        limits: kiln_server::limits::RequestLimits {
            max_body_bytes: args.max_body_bytes,
            max_tensor_elements: args.max_tensor_elements,
            max_batch_rows: args.max_batch_rows,
            max_string_bytes: args.max_string_bytes,
            max_payload_bytes: args.max_payload_bytes,
            ..Default::default()
        },
        connections: kiln_server::transport::ConnectionLimits {
            max_connections: args.max_connections,
            max_header_bytes: args.max_header_bytes,
            header_timeout: seconds(args.header_timeout_secs, "--header-timeout-secs")?,
            body_timeout: positive_seconds(args.body_timeout_secs, "--body-timeout-secs")?,
            idle_timeout: positive_seconds(args.idle_timeout_secs, "--idle-timeout-secs")?,
            ..Default::default()
        },
        tls,
        auth,
        auth_reload: {
            let every = seconds(args.auth_reload_secs, "--auth-reload-secs")?;
            if every < Duration::from_millis(100) {
                bail!("--auth-reload-secs must be at least 0.1");
            }
            every
        },
        shutdown: kiln_server::ShutdownConfig {
            delay: seconds(args.shutdown_delay_secs, "--shutdown-delay-secs")?,
            drain: seconds(args.shutdown_timeout_secs, "--shutdown-timeout-secs")?,
        },
        metrics_port: metrics.is_some().then_some(args.metrics_port),
        metrics,
        records,
        dashboard: args.dashboard == Switch::On,
        points,
        points_follow: Duration::from_millis(args.points_follow_ms.max(10)),
        otlp: args.otlp_endpoint.filter(|e| !e.is_empty() && e != "off").map(|endpoint| {
            kiln_server::otel::OtlpConfig {
                endpoint,
                protocol: args.otlp_protocol,
                sample_ratio: args.trace_sample_ratio,
                service_name: args.otel_service_name.clone(),
            }
        }),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("kiln-io").build()?;
    let served = runtime.block_on(async move {
        // Loads and reloads free large buffers on threads that then idle (`purge_freed_memory`).
        tokio::spawn(async {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                crate::purge_freed_memory();
            }
        });
        let server = BoundServer::bind(&config, engine).await?;
        let addr = server.local_addr()?;
        let grpc = server.grpc_addr()?;
        let metrics = server.metrics_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into());
        tracing::info!(
            startup_ms = started.elapsed().as_millis() as u64,
            grpc = %grpc,
            metrics = %metrics,
            auth = config.auth.is_some(),
            "kiln listening on {scheme}://{addr}",
            scheme = if config.tls.is_some() { "https" } else { "http" },
        );
        let shutdown = async {
            shutdown_signal().await;
            // A second signal while draining: the operator wants out now.
            tokio::spawn(async {
                shutdown_signal().await;
                tracing::warn!("second shutdown signal: exiting without draining");
                let _ = tokio::task::spawn_blocking(kiln_server::stop_llms).await;
                std::process::exit(130);
            });
        };
        server.serve(shutdown).await?;
        tracing::info!("kiln stopped");
        Ok(())
    });
    // The drain deadline has passed or everything is answered: work still running on the
    // blocking pool (a prompt being rendered for a client that is gone) must not keep the
    // process alive; dropping the runtime would wait for it without limit.
    runtime.shutdown_timeout(Duration::from_millis(500));
    served
}

/// Installs the Prometheus recorder behind the `metrics` facade the library crates use.
/// Latency histograms get buckets (so p99s can be computed server-side), not summaries.
fn install_metrics() -> Result<kiln_server::MetricsRender> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let seconds = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        10.0,
    ];
    let rows = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)?
        .set_buckets_for_metric(Matcher::Full("kiln_batch_size".into()), &rows)?
        .set_buckets_for_metric(Matcher::Full("kiln_llm_step_sequences".into()), &rows)?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    spawn_metrics_upkeep(handle.clone(), METRICS_UPKEEP)?;
    let process = metrics_process::Collector::default();
    process.describe();
    Ok(std::sync::Arc::new(move || {
        process.collect();
        handle.run_upkeep();
        handle.render()
    }))
}

/// How often histogram samples are folded into their buckets when nobody scrapes.
const METRICS_UPKEEP: Duration = Duration::from_secs(1);

/// The Prometheus recorder keeps every histogram sample until upkeep folds it into the
/// buckets; a scrape runs upkeep, but with no scraper attached the samples would pile up (~70
/// bytes a request). A thread of its own runs it on a timer.
fn spawn_metrics_upkeep(
    handle: metrics_exporter_prometheus::PrometheusHandle,
    every: Duration,
) -> Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("kiln-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(every);
                handle.run_upkeep();
            }
        })
        .context("cannot start the metrics upkeep thread")
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident memory of this process, in bytes (Linux).
    fn rss_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }

    #[test]
    fn histogram_samples_do_not_pile_up_without_a_scrape() {
        let Some(before) = rss_bytes() else { return };
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let histogram = metrics::with_local_recorder(&recorder, || metrics::histogram!("kiln_test_seconds"));
        let _upkeep = spawn_metrics_upkeep(handle.clone(), Duration::from_millis(20)).expect("upkeep thread");
        // 20M samples are ≥ 160 MB if kept; with upkeep they are folded away as they come.
        let mut peak = before;
        for i in 0..20_000_000u64 {
            histogram.record(0.001);
            // Room for the upkeep thread even when other builds or tests hold the cores.
            if i % 250_000 == 0 {
                std::thread::sleep(Duration::from_millis(25));
                peak = peak.max(rss_bytes().unwrap_or(0));
            }
        }
        let grown = peak.saturating_sub(before);
        assert!(grown < 64 << 20, "RSS grew by {} MB with nobody scraping", grown >> 20);
        // Folded, not lost: the count survives upkeep (metrics-util's bucket can miss a sample
        // pushed while upkeep drains it — seen once in 20M here — so not an exact equality).
        let text = handle.render();
        let count: u64 = text
            .lines()
            .find_map(|l| l.strip_prefix("kiln_test_seconds_count "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(count >= 19_999_000, "{count} of 20M samples counted: {text}");
    }

    #[test]
    fn retention_flags_parse_ages_and_sizes() {
        assert_eq!(parse_age("7d"), Ok(OrOff(Some(Duration::from_secs(7 * 86_400)))));
        assert_eq!(parse_age("1.5h"), Ok(OrOff(Some(Duration::from_secs(5400)))));
        assert_eq!(parse_age("off"), Ok(OrOff(None)));
        assert!(parse_age("7 days").is_err() && parse_age("0s").is_err() && parse_age("1e20d").is_err());
        assert_eq!(parse_bytes("2GiB"), Ok(OrOff(Some(2 << 30))));
        assert_eq!(parse_bytes("500MB"), Ok(OrOff(Some(500_000_000))));
        assert_eq!(parse_bytes("4096"), Ok(OrOff(Some(4096))));
        assert!(parse_bytes("-1").is_err() && parse_bytes("0").is_err() && parse_bytes("99999999999TiB").is_err());
    }

    #[test]
    fn float_flags_out_of_range_are_refused_with_a_message() {
        for bad in [1e20, -1.0, f64::NAN, f64::INFINITY] {
            let e = seconds(bad, "--shutdown-timeout-secs").expect_err("refused");
            assert!(e.to_string().contains("--shutdown-timeout-secs must be a number of seconds"), "{e}");
        }
        assert_eq!(seconds(1.5, "--x").expect("ok"), Duration::from_millis(1500));
    }
}

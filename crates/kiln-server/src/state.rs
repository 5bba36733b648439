//! What every handler shares, REST and gRPC alike, and the transport-neutral answers built
//! from it: readiness, the repository API (explicit load/unload), the statistics extension.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kiln_engine::{Engine, ModelControl, VersionState};
use kiln_serving::EngineError;
use kiln_serving::stats::DurationSnapshot;

use crate::error::ApiError;

/// The protocol extensions kiln implements, as `GET /v2` and ServerMetadata list them.
pub const EXTENSIONS: &[&str] = &["binary_tensor_data", "classification", "model_repository", "statistics"];

/// Renders the current metrics as Prometheus text (installed by the binary).
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Shared state of the REST and gRPC handlers.
#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    /// What one request may hold (413 for the body, 400 for the tensors beyond).
    pub limits: crate::limits::RequestLimits,
    /// Cleared when shutdown starts, so load balancers stop sending traffic.
    pub ready: Arc<AtomicBool>,
    /// Prometheus text renderer; `None` when metrics are off.
    pub metrics: Option<MetricsRender>,
    /// The prediction log; `None` when records are off.
    pub records: Option<kiln_records::Recorder>,
    /// Collections' durable points; `None` when off or no collection is served.
    pub points: Option<kiln_records::points::PointStore>,
    /// The dashboard's live window; `None` when the dashboard is off.
    pub live: Option<crate::live::LiveStats>,
    /// OpenTelemetry traces (off unless an OTLP endpoint is set).
    pub tracer: crate::otel::Tracer,
}

impl AppState {
    /// Whether the server still takes traffic (false once shutdown starts).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Explicit-mode load, off the executor (loading builds sessions and warms them up).
    pub async fn load_model(&self, name: String) -> Result<(), ApiError> {
        self.change_models("load", move |engine| engine.load_model(&name)).await
    }

    /// Explicit-mode unload.
    pub async fn unload_model(&self, name: String) -> Result<(), ApiError> {
        self.change_models("unload", move |engine| engine.unload_model(&name)).await
    }

    /// Runs a repository change on the blocking pool, in explicit mode only.
    async fn change_models(
        &self,
        what: &str,
        change: impl FnOnce(&Engine) -> Result<(), EngineError> + Send + 'static,
    ) -> Result<(), ApiError> {
        self.require_explicit()?;
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || change(&engine))
            .await
            .map_err(|e| EngineError::Backend(format!("model {what} task failed: {e}")))??;
        Ok(())
    }

    fn require_explicit(&self) -> Result<(), EngineError> {
        match self.engine.control() {
            ModelControl::Explicit => Ok(()),
            other => Err(EngineError::ModelControl(format!(
                "loading and unloading models needs `--model-control explicit` (this server runs with {})",
                match other {
                    ModelControl::None => "none",
                    ModelControl::Poll { .. } => "poll",
                    ModelControl::Explicit => "explicit",
                }
            ))),
        }
    }

    /// The statistics extension's rows: every ready version of `name` (all models when
    /// `None`), narrowed to `version` when given; naming a model and a version it does not
    /// serve is a 404.
    pub fn statistics(&self, name: Option<&str>, version: Option<&str>) -> Result<Vec<VersionStats>, ApiError> {
        let states = match name {
            Some(name) => vec![self.engine.model_state(name)?],
            None => self.engine.model_states(),
        };
        let mut rows = Vec::new();
        for state in states {
            for (v, s) in &state.versions {
                let VersionState::Ready(model) = s else { continue };
                if version.is_some_and(|want| want != v.to_string()) {
                    continue;
                }
                let st = model.stats.snapshot();
                rows.push(VersionStats {
                    name: state.name.clone(),
                    version: v.to_string(),
                    last_inference_ms: st.last_inference_ms,
                    inference_count: st.inference_count,
                    execution_count: st.execution_count,
                    success: st.success,
                    fail: st.fail,
                    queue: st.queue,
                    compute_infer: st.compute_infer,
                });
            }
        }
        if let (Some(name), Some(version)) = (name, version)
            && rows.is_empty()
        {
            return Err(ApiError::not_found(format!("model '{name}' has no served version {version}")));
        }
        Ok(rows)
    }
}

/// One version's counters, as both transports report them.
#[derive(Debug, Clone)]
pub struct VersionStats {
    pub name: String,
    pub version: String,
    pub last_inference_ms: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: DurationSnapshot,
    pub fail: DurationSnapshot,
    pub queue: DurationSnapshot,
    pub compute_infer: DurationSnapshot,
}

//! What the engine serves of one model: the state of each version it tried, and why a model
//! or a reload failed.

use std::collections::BTreeMap;

use kiln_repository::layout::Fingerprint;
use kiln_serving::ModelHandle;

/// The state of one version of a model.
#[derive(Debug, Clone)]
pub enum VersionState {
    Ready(ModelHandle),
    Failed(String),
}

/// One model and the state of each version kiln tried to serve.
#[derive(Debug, Clone)]
pub struct ModelState {
    pub name: String,
    pub versions: BTreeMap<u64, VersionState>,
    /// A problem with the model as a whole (bad config.toml, no versions, unloaded) or with
    /// its last reload while an older copy keeps serving.
    pub error: Option<String>,
    /// The files the current state was built from (for change detection).
    pub(crate) fingerprint: Fingerprint,
    /// `[rollout]`: a canary or a shadow version, and what the shadow did.
    pub rollout: Option<std::sync::Arc<crate::rollout::Rollout>>,
}

impl ModelState {
    pub(crate) fn failed(name: &str, error: String, fingerprint: Fingerprint) -> Self {
        ModelState { name: name.to_string(), versions: BTreeMap::new(), error: Some(error), fingerprint, rollout: None }
    }

    /// Versions that are ready, ascending.
    pub fn ready_versions(&self) -> Vec<u64> {
        self.versions.iter().filter(|(_, s)| matches!(s, VersionState::Ready(_))).map(|(&v, _)| v).collect()
    }

    /// Why the model cannot serve, when it cannot.
    pub fn unavailable_reason(&self) -> Option<String> {
        if !self.ready_versions().is_empty() {
            return None;
        }
        let mut reasons: Vec<String> = self.error.iter().cloned().collect();
        reasons.extend(self.versions.iter().filter_map(|(v, s)| match s {
            VersionState::Failed(reason) => Some(format!("version {v}: {reason}")),
            VersionState::Ready(_) => None,
        }));
        Some(format!("model '{}' is not available: {}", self.name, reasons.join("; ")))
    }
}

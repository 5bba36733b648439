//! kiln-python: the `kiln._kiln` extension module. It runs kiln's engine — the same loading
//! code, config.toml, ZipMap rewrite, validation and ONNX Runtime sessions as `kiln serve` —
//! inside a Python process, on numpy arrays, with the GIL released while the model runs.
//!
//! A call takes a free instance from the model's pool and runs it on the calling thread (no
//! queue, no thread hop): the fastest path for one process. C-contiguous numpy inputs are
//! handed to ONNX Runtime in place; other layouts are copied in row-major order. Outputs
//! become numpy arrays without a copy.
//!
//! It owns no protocol and no serving policy; errors carry the engine's messages.

mod convert;
mod llm;

use convert::*;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

use kiln_core::{DataType, ModelInstance, ModelSignature, Tensor};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

pyo3::create_exception!(
    _kiln,
    KilnError,
    PyValueError,
    "A request that kiln refused or could not run; the message says why."
);

fn kiln_err(msg: impl std::fmt::Display) -> PyErr {
    KilnError::new_err(msg.to_string())
}

/// Loads `libonnxruntime` (the Python package finds the path: the `onnxruntime` wheel of this
/// interpreter). Safe to call more than once.
#[pyfunction]
fn init_runtime(path: Option<PathBuf>) -> PyResult<String> {
    let location = kiln_backend_ort::runtime::locate(path.as_deref()).map_err(kiln_err)?;
    kiln_backend_ort::runtime::init(&location).map_err(kiln_err)?;
    Ok(location.path.display().to_string())
}

/// Token ids of `text` as a kiln text model sees them (kiln's truncation, no padding).
#[pyfunction]
#[pyo3(signature = (tokenizer, text, max_length=256))]
fn tokenize(tokenizer: PathBuf, text: &str, max_length: usize) -> PyResult<Vec<u32>> {
    let t = kiln_text::load_tokenizer(&tokenizer, max_length).map_err(kiln_err)?;
    let encoding = t.encode(text, true).map_err(|e| kiln_err(format!("tokenization failed: {e}")))?;
    Ok(encoding.get_ids().to_vec())
}

/// A model loaded in this process.
#[pyclass(frozen, module = "kiln")]
struct Model {
    name: String,
    version: u64,
    signature: ModelSignature,
    labels: BTreeMap<String, Vec<String>>,
    free: Mutex<Vec<Box<dyn ModelInstance>>>,
    returned: Condvar,
}

impl Model {
    fn take_instance(&self) -> Box<dyn ModelInstance> {
        let mut free = self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loop {
            if let Some(instance) = free.pop() {
                return instance;
            }
            free = self.returned.wait(free).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    fn give_back(&self, instance: Box<dyn ModelInstance>) {
        self.free.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(instance);
        self.returned.notify_one();
    }

    fn run<'py>(&self, py: Python<'py>, inputs: Vec<Input<'py>>, outputs: Vec<String>) -> PyResult<Bound<'py, PyDict>> {
        let views = inputs.iter().map(Input::view).collect::<PyResult<Vec<_>>>()?;
        self.signature.validate_inputs(&views).map_err(kiln_err)?;
        let outputs = self.signature.resolve_outputs(&outputs).map_err(kiln_err)?;
        let result = py.detach(|| {
            let mut instance = self.take_instance();
            let result = std::panic::catch_unwind(AssertUnwindSafe(|| instance.run_views(&views, &outputs)));
            self.give_back(instance);
            match result {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(_) => Err("the backend panicked while running the model".to_string()),
            }
        });
        let tensors = result.map_err(kiln_err)?;
        let dict = PyDict::new(py);
        for tensor in tensors {
            let name = tensor.name.clone();
            dict.set_item(name, to_numpy(py, tensor)?)?;
        }
        Ok(dict)
    }

    fn collect_inputs<'py>(&self, x: &Bound<'py, PyAny>) -> PyResult<Vec<Input<'py>>> {
        collect_inputs(&self.name, &self.signature, x)
    }

    /// The probability output: one with class labels, else the only 2-D float output.
    fn proba_output(&self) -> PyResult<String> {
        if let Some(name) = self.signature.outputs.iter().find(|s| self.labels.contains_key(&s.name)) {
            return Ok(name.name.clone());
        }
        let floats: Vec<_> = self
            .signature
            .outputs
            .iter()
            .filter(|s| matches!(s.datatype, DataType::Fp32 | DataType::Fp64) && s.shape.len() == 2)
            .collect();
        match floats.as_slice() {
            [one] => Ok(one.name.clone()),
            _ => Err(kiln_err(format!("model '{}' has no single probability output", self.name))),
        }
    }
}

#[pymethods]
impl Model {
    /// Loads a model: an ONNX file, a repository model folder (`REPO/name`, with its
    /// config.toml), or a repository with `name=`. `threads`/`instances` override config.toml.
    #[new]
    #[pyo3(signature = (path, name=None, version=None, threads=None, instances=None))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        name: Option<String>,
        version: Option<u64>,
        threads: Option<usize>,
        instances: Option<usize>,
    ) -> PyResult<Self> {
        if threads == Some(0) || instances == Some(0) {
            return Err(kiln_err("threads and instances must be at least 1"));
        }
        let path = match name {
            Some(n) => path.join(n),
            None => path,
        };
        let loaded = py
            .detach(|| {
                kiln_engine::repository::prepare_path(&path, version, |config| {
                    if threads.is_some() {
                        config.threads = threads;
                    }
                    if instances.is_some() {
                        config.instances = instances;
                    }
                })
            })
            .map_err(kiln_err)?;
        Ok(Model {
            name: loaded.name,
            version: loaded.version,
            signature: loaded.signature,
            labels: loaded.labels,
            free: Mutex::new(loaded.instances),
            returned: Condvar::new(),
        })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn version(&self) -> u64 {
        self.version
    }

    /// Inputs as a list of {"name", "datatype", "shape"} (-1 = any size).
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.signature.inputs, &BTreeMap::new())
    }

    /// Outputs as a list of {"name", "datatype", "shape"[, "labels"]}.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.signature.outputs, &self.labels)
    }

    /// Class labels of the probability output, in column order (scikit-learn's `classes_`).
    #[getter]
    fn classes_(&self) -> PyResult<Vec<String>> {
        let output = self.proba_output()?;
        self.labels.get(&output).cloned().ok_or_else(|| kiln_err(format!("output '{output}' has no class labels")))
    }

    /// Runs the model. `x` is an array (for a one-input model) or a dict of name -> array;
    /// returns a dict of output name -> numpy array. The GIL is released while it runs.
    #[pyo3(signature = (x, outputs=None))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        outputs: Option<Vec<String>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let inputs = self.collect_inputs(x)?;
        self.run(py, inputs, outputs.unwrap_or_default())
    }

    /// The class-probability matrix, like scikit-learn's `predict_proba`.
    fn predict_proba<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let output = self.proba_output()?;
        let inputs = self.collect_inputs(x)?;
        let dict = self.run(py, inputs, vec![output.clone()])?;
        dict.get_item(&output)?.ok_or_else(|| kiln_err("no probability output"))
    }

    /// The predicted labels, like scikit-learn's `predict` (the first output).
    fn predict_labels<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let output = self.signature.outputs.first().map(|s| s.name.clone()).ok_or_else(|| kiln_err("no outputs"))?;
        let inputs = self.collect_inputs(x)?;
        let dict = self.run(py, inputs, vec![output.clone()])?;
        dict.get_item(&output)?.ok_or_else(|| kiln_err("no label output"))
    }

    fn __repr__(&self) -> String {
        format!(
            "kiln.Model(name={:?}, version={}, inputs={:?}, outputs={:?})",
            self.name,
            self.version,
            self.signature.input_names(),
            self.signature.output_names()
        )
    }
}

/// A pipeline (or any model) of a repository, run by the whole engine in this process: its
/// models' queues and batchers, remote steps, retries and fallbacks — what `kiln serve`
/// runs, without the network in front. The engine runs on its own threads; a call waits for
/// its answer with the GIL released.
#[pyclass(frozen, module = "kiln")]
struct Pipeline {
    name: String,
    engine: kiln_engine::Engine,
    runtime: tokio::runtime::Runtime,
    signature: ModelSignature,
}

#[pymethods]
impl Pipeline {
    /// Loads the repository `repository` (every model and pipeline in it) and serves `name`.
    #[new]
    fn new(py: Python<'_>, repository: PathBuf, name: String) -> PyResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiln-pipeline")
            .enable_all()
            .build()
            .map_err(|e| kiln_err(format!("cannot start the pipeline's runtime: {e}")))?;
        let engine = py
            .detach(|| {
                let _inside = runtime.enter();
                kiln_engine::Engine::load_repository(&repository)
            })
            .map_err(kiln_err)?;
        let model = engine.model(&name, None).map_err(|e| {
            let reason = engine
                .index()
                .into_iter()
                .find(|row| row.name == name)
                .and_then(|row| row.reason)
                .map(|r| format!(": {r}"))
                .unwrap_or_default();
            kiln_err(format!("{e}{reason}"))
        })?;
        let signature = model.signature.clone();
        Ok(Pipeline { name, engine, runtime, signature })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Inputs as a list of {"name", "datatype", "shape"}.
    #[getter]
    fn inputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.signature.inputs, &BTreeMap::new())
    }

    /// Outputs as a list of {"name", "datatype", "shape"}.
    #[getter]
    fn outputs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        specs(py, &self.signature.outputs, &BTreeMap::new())
    }

    /// Runs the pipeline: `x` is an array (one input) or a dict of name -> array; returns a
    /// dict of output name -> numpy array, and with `trace=True` also a list of the steps'
    /// {"step", "start_us", "duration_us", "outcome"}. `timeout` is in seconds.
    #[pyo3(signature = (x, outputs=None, trace=false, timeout=None))]
    fn run<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        outputs: Option<Vec<String>>,
        trace: bool,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let inputs = collect_inputs(&self.name, &self.signature, x)?;
        let tensors = inputs
            .iter()
            .map(|i| {
                let view = i.view()?;
                Tensor::new(view.name, view.shape.clone(), view.data.to_owned_data()).map_err(kiln_err)
            })
            .collect::<PyResult<Vec<_>>>()?;
        let timeout = match timeout {
            None => None,
            Some(t) => match std::time::Duration::try_from_secs_f64(t) {
                Ok(d) if t > 0.0 => Some(d),
                _ => return Err(kiln_err(format!("timeout must be a positive number of seconds, got {t}"))),
            },
        };
        let request = kiln_serving::InferRequest {
            inputs: tensors,
            outputs: outputs.unwrap_or_default(),
            timeout,
            protocol: kiln_serving::Protocol::InProcess,
            trace,
            span: None,
        };
        let model = self.engine.model(&self.name, None).map_err(kiln_err)?;
        let response = py.detach(|| self.runtime.block_on(model.infer(request))).map_err(kiln_err)?;
        let dict = PyDict::new(py);
        for tensor in response.outputs {
            let name = tensor.name.clone();
            dict.set_item(name, to_numpy(py, tensor)?)?;
        }
        if !trace {
            return Ok(dict.into_any());
        }
        let steps = PyList::empty(py);
        for t in &response.trace {
            let d = PyDict::new(py);
            d.set_item("step", &t.step)?;
            d.set_item("start_us", t.start.as_micros() as u64)?;
            d.set_item("duration_us", t.duration.as_micros() as u64)?;
            d.set_item("outcome", t.outcome)?;
            steps.append(d)?;
        }
        Ok((dict, steps).into_pyobject(py)?.into_any())
    }

    fn __repr__(&self) -> String {
        format!(
            "kiln.Pipeline(name={:?}, inputs={:?}, outputs={:?})",
            self.name,
            self.signature.input_names(),
            self.signature.output_names()
        )
    }
}

fn specs<'py>(
    py: Python<'py>,
    specs: &[kiln_core::TensorSpec],
    labels: &BTreeMap<String, Vec<String>>,
) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for s in specs {
        let d = PyDict::new(py);
        d.set_item("name", &s.name)?;
        d.set_item("datatype", s.datatype.as_str())?;
        d.set_item("shape", s.shape.clone())?;
        if let Some(l) = labels.get(&s.name) {
            d.set_item("labels", l.clone())?;
        }
        list.append(d)?;
    }
    Ok(list)
}

#[pymodule]
#[allow(unsafe_code)]
fn _kiln(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // ggml's kernels such that an LLM sequence's logits do not depend on its batch (see
    // `kiln_llm::BATCH_INVARIANT_ENV`); ggml reads it at its first matmul.
    let (name, value) = kiln_llm::BATCH_INVARIANT_ENV;
    // SAFETY: set while the module is imported, holding the GIL and before kiln starts any thread;
    // Python code does not read the C environment without the GIL.
    unsafe { std::env::set_var(name, value) };
    m.add_class::<Model>()?;
    m.add_class::<Pipeline>()?;
    m.add_class::<llm::Llm>()?;
    m.add_class::<llm::TextStream>()?;
    m.add_function(wrap_pyfunction!(llm::stop_llms, m)?)?;
    m.add_function(wrap_pyfunction!(init_runtime, m)?)?;
    m.add_function(wrap_pyfunction!(tokenize, m)?)?;
    m.add("KilnError", m.py().get_type::<KilnError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}

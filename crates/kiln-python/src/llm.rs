//! `kiln.LLM`: a generative model (GGUF) on kiln's LLM engine in this process — the scheduler,
//! continuous batching, chat template, constrained decoding and tool calls of `kiln serve`, with
//! OpenAI's parameters as keyword arguments. Calls wait with the GIL released: Python threads
//! calling one `LLM` are batched together like concurrent HTTP requests.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_llm::reasoning::ThinkSplit;
use kiln_llm::request::{self, ParamError};
use kiln_llm::tools::{self, ToolChoice};
use kiln_llm::{Completion, Event, FinishReason, GenerateParams, Generation, Grammar, LlmModel, Usage};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use serde_json::Value;

use crate::kiln_err;

/// A Python object as JSON (through Python's own `json`, so dicts, lists, str, numbers, bools
/// and None map as they would on the wire).
fn to_json(value: &Bound<'_, PyAny>, what: &str) -> PyResult<Value> {
    let text: String = value.py().import("json")?.call_method1("dumps", (value,))?.extract()?;
    serde_json::from_str(&text).map_err(|e| kiln_err(format!("{what} is not JSON-like: {e}")))
}

/// The `response_format` keyword argument.
fn format_of(value: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Grammar>> {
    match value {
        Some(f) => request::response_format(Some(to_json(f, "response_format")?)).map_err(param),
        None => Ok(None),
    }
}

/// The penalties, `logit_bias` and llama.cpp's `top_k`/`min_p`/`repeat_penalty` given as
/// keyword arguments — parsed and checked by the same code as the server's JSON fields.
fn shaping_of(options: Option<&Bound<'_, PyDict>>, model: &LlmModel) -> PyResult<kiln_llm::Shaping> {
    let mut given = serde_json::Map::new();
    if let Some(options) = options {
        for (key, value) in options.iter() {
            let key: String = key.extract()?;
            let Some(&name) = request::SHAPING.iter().find(|n| **n == key) else {
                return Err(pyo3::exceptions::PyTypeError::new_err(format!("unexpected keyword argument '{key}'")));
            };
            given.insert(name.to_string(), to_json(&value, name)?);
        }
    }
    let shaping = request::shaping(|name| given.remove(name)).map_err(param)?;
    request::check_logit_bias(&shaping, model.vocab_size()).map_err(param)?;
    Ok(shaping)
}

/// `logprobs` as the engine takes it: at most kiln_llm::MAX_TOP_LOGPROBS alternatives, and not
/// with `stream=True` (a stream yields text pieces only).
fn checked_logprobs(logprobs: Option<usize>, stream: bool) -> PyResult<Option<usize>> {
    match logprobs {
        Some(k) if k > kiln_llm::MAX_TOP_LOGPROBS => {
            Err(kiln_err(format!("logprobs: at most {} alternatives, got {k}", kiln_llm::MAX_TOP_LOGPROBS)))
        }
        Some(_) if stream => Err(kiln_err("logprobs: not with stream=True (a stream yields text pieces)")),
        other => Ok(other),
    }
}

/// Per generated token: {"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob",
/// "bytes"}]} (OpenAI's chat shape).
fn logprobs_list<'py>(py: Python<'py>, tokens: &[kiln_llm::TokenLogprob]) -> PyResult<Bound<'py, PyList>> {
    let entry = |token: &str, bytes: &[u8], logprob: f32| -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item("token", token)?;
        d.set_item("logprob", logprob)?;
        d.set_item("bytes", bytes.to_vec())?;
        Ok(d)
    };
    let list = PyList::empty(py);
    for t in tokens {
        let d = entry(&t.token, &t.bytes, t.logprob)?;
        let top = PyList::empty(py);
        for a in &t.top {
            top.append(entry(&a.token, &a.bytes, a.logprob)?)?;
        }
        d.set_item("top_logprobs", top)?;
        list.append(d)?;
    }
    Ok(list)
}

fn param(e: ParamError) -> PyErr {
    kiln_err(format!("{}: {}", e.param, e.message))
}

/// Ends every LLM scheduler of the process (joins their threads). `kiln` registers it with
/// `atexit`: an interpreter that exits while llama.cpp computes a step would tear its static
/// state down under the running thread.
#[pyfunction]
pub fn stop_llms(py: Python<'_>) {
    py.detach(kiln_llm::stop_all);
}

/// A generative LLM loaded in this process.
#[pyclass(frozen, module = "kiln", name = "LLM")]
pub struct Llm {
    name: String,
    model: Arc<LlmModel>,
    /// Keeps the loaded version (and its scheduler) alive.
    _served: kiln_serving::ModelHandle,
}

/// Sampling and stop settings from keyword arguments.
struct Sampling {
    params: GenerateParams,
}

fn sampling(
    max_tokens: Option<u32>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    seed: Option<u32>,
    stop: Option<Vec<String>>,
) -> PyResult<Sampling> {
    if max_tokens == Some(0) {
        return Err(kiln_err("max_tokens must be at least 1"));
    }
    if temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
        return Err(kiln_err("temperature must be between 0 and 2"));
    }
    if top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(kiln_err("top_p must be greater than 0 and at most 1"));
    }
    Ok(Sampling {
        params: GenerateParams {
            max_tokens,
            temperature,
            top_p,
            seed,
            stop: stop.unwrap_or_default(),
            constraint: None,
            shaping: Default::default(),
            logprobs: None,
        },
    })
}

fn usage_dict<'py>(py: Python<'py>, u: Usage) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("prompt_tokens", u.prompt_tokens)?;
    d.set_item("completion_tokens", u.completion_tokens)?;
    d.set_item("total_tokens", u.prompt_tokens + u.completion_tokens)?;
    Ok(d)
}

#[pymethods]
impl Llm {
    /// Loads an LLM: a `.gguf` file (kiln's default settings), a repository model folder with
    /// `kind = "llm"` (its config.toml), or a repository with `name=`.
    #[new]
    #[pyo3(signature = (path, name=None, version=None))]
    fn new(py: Python<'_>, path: PathBuf, name: Option<String>, version: Option<u64>) -> PyResult<Self> {
        let path = match name {
            Some(n) => path.join(n),
            None => path,
        };
        let served = py.detach(|| kiln_engine::repository::load_llm_path(&path, version)).map_err(kiln_err)?;
        let model = served
            .runs::<std::sync::Arc<kiln_llm::LlmModel>>()
            .cloned()
            .ok_or_else(|| kiln_err(format!("{} is not an LLM", path.display())))?;
        Ok(Llm { name: served.name.clone(), model, _served: Arc::new(served) })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    /// Tokens per sequence (prompt + answer).
    #[getter]
    fn context_length(&self) -> usize {
        self.model.info().context_length
    }

    /// Answers chat `messages` (OpenAI's list of {"role", "content"}, tool calls and results
    /// included). Returns {"role", "content", "tool_calls" (when the model called tools),
    /// "reasoning_content" (a reasoning model's thoughts), "logprobs" (with `logprobs=True`),
    /// "finish_reason", "usage"}; with `stream=True` an iterator of text pieces instead.
    #[pyo3(signature = (messages, *, max_tokens=None, temperature=None, top_p=None, seed=None, stop=None,
                        response_format=None, tools=None, tool_choice=None, parallel_tool_calls=false, stream=false,
                        chat_template_kwargs=None, logprobs=false, top_logprobs=None, **options))]
    #[allow(clippy::too_many_arguments)]
    fn chat<'py>(
        &self,
        py: Python<'py>,
        messages: &Bound<'py, PyAny>,
        max_tokens: Option<u32>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        seed: Option<u32>,
        stop: Option<Vec<String>>,
        response_format: Option<&Bound<'py, PyAny>>,
        tools: Option<&Bound<'py, PyAny>>,
        tool_choice: Option<&Bound<'py, PyAny>>,
        parallel_tool_calls: bool,
        stream: bool,
        chat_template_kwargs: Option<&Bound<'py, PyAny>>,
        logprobs: bool,
        top_logprobs: Option<usize>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let messages = request::messages(Some(to_json(messages, "messages")?)).map_err(param)?;
        let kwargs = match chat_template_kwargs {
            Some(k) => request::template_kwargs(Some(to_json(k, "chat_template_kwargs")?)).map_err(param)?,
            None => Default::default(),
        };
        let logprobs = match (logprobs, top_logprobs) {
            (false, Some(_)) => return Err(kiln_err("top_logprobs: needs logprobs=True")),
            (true, top) => Some(top.unwrap_or(0)),
            (false, None) => None,
        };
        let format = format_of(response_format)?;
        let tools = match tools {
            Some(t) => request::tool_list(Some(to_json(t, "tools")?)).map_err(param)?,
            None => Vec::new(),
        };
        let choice = match tool_choice {
            Some(c) => request::tool_choice(Some(to_json(c, "tool_choice")?), &tools).map_err(param)?,
            None => request::tool_choice(None, &tools).map_err(param)?,
        };
        let offered = !tools.is_empty() && choice != ToolChoice::None;
        let mut sampling = sampling(max_tokens, temperature, top_p, seed, stop)?;
        sampling.params.shaping = shaping_of(options, &self.model)?;
        sampling.params.logprobs = checked_logprobs(logprobs, stream)?;
        let model = &self.model;
        let (generation, thinking) = py.detach(|| {
            let offer = if offered { &tools[..] } else { &[] };
            let prompt = model.chat_prompt_with(&messages, offer, &kwargs).map_err(kiln_err)?;
            sampling.params.constraint =
                model.compile_answer(format.as_ref(), &tools, &choice, parallel_tool_calls).map_err(param)?;
            let thinking = model.reasons().then(|| model.opens_thinking(&prompt));
            Ok::<_, PyErr>((model.generate(prompt, &sampling.params).map_err(kiln_err)?, thinking))
        })?;
        if stream {
            return Ok(Bound::new(py, TextStream::new(generation))?.into_any());
        }
        let done = py.detach(|| generation.complete_blocking()).map_err(kiln_err)?;
        let d = PyDict::new(py);
        d.set_item("role", "assistant")?;
        let text = match thinking {
            Some(thinking) => {
                let split = ThinkSplit::split(&done.text, thinking);
                if !split.reasoning.is_empty() {
                    d.set_item("reasoning_content", &split.reasoning)?;
                }
                split.content
            }
            None => done.text.clone(),
        };
        if sampling.params.logprobs.is_some() {
            d.set_item("logprobs", logprobs_list(py, &done.logprobs)?)?;
        }
        let syntax = self.model.tool_syntax();
        let calls = if offered { tools::parse(&text, syntax) } else { None };
        match calls {
            Some(calls) => {
                d.set_item("content", py.None())?;
                let list = PyList::empty(py);
                for (i, c) in calls.iter().enumerate() {
                    let f = PyDict::new(py);
                    f.set_item("name", &c.name)?;
                    f.set_item("arguments", &c.arguments)?;
                    let call = PyDict::new(py);
                    call.set_item("id", syntax.numbered_call_id(i))?;
                    call.set_item("type", "function")?;
                    call.set_item("function", f)?;
                    list.append(call)?;
                }
                d.set_item("tool_calls", list)?;
                let finish = if done.reason == FinishReason::Stop { "tool_calls" } else { "length" };
                d.set_item("finish_reason", finish)?;
            }
            None => {
                d.set_item("content", &text)?;
                d.set_item("finish_reason", done.reason.as_str())?;
            }
        }
        d.set_item("usage", usage_dict(py, done.usage)?)?;
        Ok(d.into_any())
    }

    /// Continues a raw `prompt` (no chat template). Returns {"text", "finish_reason", "usage"}
    /// (and "logprobs" with `logprobs=K`: each token's and its K most likely alternatives');
    /// with `stream=True` an iterator of text pieces.
    #[pyo3(signature = (prompt, *, max_tokens=None, temperature=None, top_p=None, seed=None, stop=None,
                        response_format=None, stream=false, logprobs=None, **options))]
    #[allow(clippy::too_many_arguments)]
    fn complete<'py>(
        &self,
        py: Python<'py>,
        prompt: &str,
        max_tokens: Option<u32>,
        temperature: Option<f32>,
        top_p: Option<f32>,
        seed: Option<u32>,
        stop: Option<Vec<String>>,
        response_format: Option<&Bound<'py, PyAny>>,
        stream: bool,
        logprobs: Option<usize>,
        options: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let format = format_of(response_format)?;
        let mut sampling = sampling(max_tokens, temperature, top_p, seed, stop)?;
        sampling.params.shaping = shaping_of(options, &self.model)?;
        sampling.params.logprobs = checked_logprobs(logprobs, stream)?;
        let model = &self.model;
        let generation = py.detach(|| {
            let tokens = model.text_prompt(prompt).map_err(kiln_err)?;
            sampling.params.constraint =
                model.compile_answer(format.as_ref(), &[], &ToolChoice::None, false).map_err(param)?;
            model.generate(tokens, &sampling.params).map_err(kiln_err)
        })?;
        if stream {
            return Ok(Bound::new(py, TextStream::new(generation))?.into_any());
        }
        let done: Completion = py.detach(|| generation.complete_blocking()).map_err(kiln_err)?;
        let d = PyDict::new(py);
        d.set_item("text", &done.text)?;
        if sampling.params.logprobs.is_some() {
            d.set_item("logprobs", logprobs_list(py, &done.logprobs)?)?;
        }
        d.set_item("finish_reason", done.reason.as_str())?;
        d.set_item("usage", usage_dict(py, done.usage)?)?;
        Ok(d.into_any())
    }

    fn __repr__(&self) -> String {
        let info = self.model.info();
        format!(
            "kiln.LLM(name={:?}, architecture={:?}, parameters={}, context_length={})",
            self.name, info.architecture, info.parameters, info.context_length
        )
    }
}

/// The text of a streamed answer, piece by piece. Dropping it (or leaving the loop) cancels the
/// generation; `finish_reason` and `usage` are set once it ended.
#[pyclass(module = "kiln")]
pub struct TextStream {
    generation: Mutex<Option<Generation>>,
    #[pyo3(get)]
    finish_reason: Option<String>,
    usage: Option<Usage>,
}

impl TextStream {
    fn new(generation: Generation) -> Self {
        TextStream { generation: Mutex::new(Some(generation)), finish_reason: None, usage: None }
    }
}

#[pymethods]
impl TextStream {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<String>> {
        let generation = self.generation.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(g) = generation.as_mut() else { return Ok(None) };
        // The bridge asks for no log-probabilities: the events are text and one end.
        let next = py.detach(|| {
            let mut next = g.next_blocking();
            while let Some(Event::Logprobs(_)) = next {
                next = g.next_blocking();
            }
            next
        });
        match next {
            Some(Event::Logprobs(_)) => Ok(None),
            Some(Event::Text(piece)) => Ok(Some(piece)),
            Some(Event::Done { reason, usage }) => {
                *generation = None;
                self.finish_reason = Some(reason.as_str().to_string());
                self.usage = Some(usage);
                Ok(None)
            }
            Some(Event::Failed(e)) => {
                *generation = None;
                Err(kiln_err(e))
            }
            None => {
                *generation = None;
                Err(kiln_err("the model is shutting down"))
            }
        }
    }

    /// Token counts, once the stream ended.
    #[getter]
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.usage.map(|u| usage_dict(py, u)).transpose()
    }

    /// Stops the generation now (its sequence slot is freed before the next step).
    fn close(&mut self) {
        *self.generation.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    }
}

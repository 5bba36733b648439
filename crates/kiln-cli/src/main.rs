//! The `kiln` command: a thin shell over the library crates.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use kiln_backend_ort::{onnx_proto, runtime};
use kiln_engine::repository;
use kiln_server::v2;
use kiln_serving::InferRequest;

/// kiln serves ONNX models exported from Python (scikit-learn, PyTorch) over the KServe v2 /
/// Open Inference Protocol, on the same ONNX Runtime build that the `onnxruntime` Python
/// wheel ships.
#[derive(Debug, Parser)]
#[command(name = "kiln", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Path of libonnxruntime (e.g. .venv/lib/python3.11/site-packages/onnxruntime/capi/libonnxruntime.so.1.31.1).
    /// Without it kiln tries ORT_DYLIB_PATH, then the onnxruntime package of python3 on PATH,
    /// then the .venv of the kiln checkout.
    #[arg(long, env = "KILN_ONNXRUNTIME", global = true)]
    onnxruntime: Option<PathBuf>,

    /// Log format.
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty, global = true)]
    log_format: LogFormat,

    /// Log filter (tracing's EnvFilter syntax, e.g. "info" or "kiln_engine=debug"); llama.cpp's
    /// own messages (target llama-cpp-2) show from warn up unless the filter names them.
    #[arg(long, env = "KILN_LOG", default_value = "info", global = true)]
    log_level: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line, for log collectors.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelControlArg {
    /// Load every model at start; never change.
    None,
    /// Rescan the repository every --poll-interval-secs and apply changes.
    Poll,
    /// Load and unload only on request (POST /v2/repository/models/<m>/load|unload).
    Explicit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Switch {
    On,
    Off,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve a model repository (REPO/<model>/<version>/model.onnx) over KServe v2 REST and gRPC.
    Serve(Box<ServeArgs>),
    /// Show a model file's inputs, outputs, opsets and operators.
    Inspect {
        /// An ONNX file.
        model: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Load-test a KServe v2 server (REST JSON/binary, gRPC) or kiln's engine in-process:
    /// throughput, HdrHistogram percentiles, errors; --json, --plot FILE.svg.
    Bench(Box<BenchArgs>),
    /// Check that a model in a repository gives the outputs its Python original gave: runs the
    /// parity fixture that `kiln.export` stored (REPO/<model>/<version>/parity.json) and
    /// compares; exits 1 beyond the tolerance.
    Verify {
        /// A repository model folder (REPO/<model>).
        model: PathBuf,
        /// Version to check (default: the highest).
        #[arg(long)]
        model_version: Option<u64>,
        /// Absolute tolerance (default: the fixture's, else 1e-5).
        #[arg(long)]
        tolerance: Option<f64>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Replay a model's logged requests (the prediction log) on a candidate version and compare
    /// its answers with the logged ones: agreement (labels exactly, values within --tolerance)
    /// and latency, side by side.
    Replay {
        /// The model repository.
        repository: PathBuf,
        /// The model whose requests to replay.
        model: String,
        /// The candidate version.
        #[arg(long = "version", value_name = "N")]
        candidate: u64,
        /// How far back: 90s, 30m, 1h, 2d.
        #[arg(long, default_value = "1h", value_parser = parse_age)]
        since: std::time::Duration,
        /// The prediction log (default: REPO.records.sqlite beside the repository, as `serve`).
        #[arg(long)]
        records: Option<String>,
        /// Most requests replayed (the newest).
        #[arg(long, default_value_t = 10_000)]
        limit: usize,
        /// How far apart floating-point outputs may be and agree (relative; absolute near 0).
        #[arg(long, default_value_t = kiln_engine::rollout::TOLERANCE)]
        tolerance: f64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a model once, without a server, on a v2 inference request read from a file or stdin;
    /// prints the v2 response JSON.
    Predict {
        /// An ONNX file, or a model folder of a repository (REPO/<model>, with its config.toml).
        model: PathBuf,
        /// The request: a KServe v2 JSON inference request ("-" = stdin).
        #[arg(long, short, default_value = "-")]
        input: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BenchProtocol {
    /// REST with JSON tensors.
    RestJson,
    /// REST with the binary tensor extension (what tritonclient sends).
    RestBinary,
    /// gRPC ModelInfer with raw_input_contents.
    Grpc,
    /// kiln's engine in this process (needs --model-path): the ceiling without a network.
    /// Each caller is a thread that runs on an idle instance directly.
    InProcess,
}

#[derive(Debug, clap::Args)]
struct BenchArgs {
    /// Model name (on the server), or a label for in-process runs.
    model: String,
    /// host:port of the server (REST port for rest-*, gRPC port for grpc).
    #[arg(long, default_value = "127.0.0.1:8000")]
    url: String,
    /// How requests travel.
    #[arg(long, value_enum, default_value_t = BenchProtocol::RestBinary)]
    protocol: BenchProtocol,
    /// Model version (default: the server's choice).
    #[arg(long)]
    model_version: Option<String>,
    /// Closed loop: callers sending back to back.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// Open loop: requests per second on a fixed schedule (latency counted from the intended
    /// send time); replaces --concurrency.
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds to measure.
    #[arg(long, short = 'd', default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many measured requests instead.
    #[arg(long, short = 'n')]
    requests: Option<u64>,
    /// Seconds of unmeasured load first.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Rows per request for random inputs (dynamic first dimensions).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// A v2 JSON inference request to send instead of random inputs.
    #[arg(long)]
    input: Option<PathBuf>,
    /// In-process: an ONNX file or a repository model folder.
    #[arg(long)]
    model_path: Option<PathBuf>,
    /// gRPC connections to spread the load over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Load-generator threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Write an SVG of the latency distribution and throughput over time.
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn init_logging(format: LogFormat, filter: &str) -> Result<()> {
    // llama.cpp reports every tensor it loads at its info level: keep its warnings only,
    // unless the filter names it (e.g. "info,llama-cpp-2=info").
    let filter = if filter.contains("llama") { filter.to_string() } else { format!("{filter},llama-cpp-2=warn") };
    let filter =
        tracing_subscriber::EnvFilter::try_new(&filter).with_context(|| format!("invalid --log-level '{filter}'"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Ok(())
}

/// The onnxruntime 1.31 wheel's library sends telemetry (a device id and a `ProcessInfo` event
/// under `$HOME/.cache/Microsoft/`) as soon as it creates its environment, before any API call
/// could turn it off; it reads `ORT_DISABLE_TELEMETRY` at load. Set it unless the user did.
#[allow(unsafe_code)]
fn disable_onnxruntime_telemetry() {
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        // SAFETY: called first thing in `main`, before any other thread exists, so nothing can
        // read the environment concurrently.
        unsafe { std::env::set_var("ORT_DISABLE_TELEMETRY", "1") };
    }
}

/// ggml's kernels such that a sequence's logits do not depend on its batch (see
/// `kiln_llm::BATCH_INVARIANT_ENV`): what kiln promises — same input, same answer — wins over
/// a user's setting.
#[allow(unsafe_code)]
fn batch_invariant_llm_kernels() {
    let (name, value) = kiln_llm::BATCH_INVARIANT_ENV;
    // SAFETY: called first thing in `main`, before any other thread exists.
    unsafe { std::env::set_var(name, value) };
}

/// mimalloc: requests hand the prediction log and the model workers buffers that other threads
/// free; glibc's malloc serialised those frees on its arena locks.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc gives the memory threads free back to the OS only when a later allocator call gets
/// round to purging it (at the earliest 10 ms after the free). Memory freed by a thread that then
/// goes idle stayed resident: the model loader's transient buffers (a Hugging Face folder's
/// weights as read, the ONNX graph written from them, ONNX Runtime's load-time copies) — a kiln
/// serving one MiniLM folder held 380–560 MB after loading, 175 MB once purged. `serve` calls
/// this every few seconds from its runtime; it returns at once when nothing is due.
#[allow(unsafe_code)]
fn purge_freed_memory() {
    // SAFETY: mi_collect takes no pointer and frees nothing in use; it only returns pages that
    // are already free to the OS.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

fn main() -> ExitCode {
    disable_onnxruntime_telemetry();
    batch_invariant_llm_kernels();
    let cli = Cli::parse();
    if let Err(e) = init_logging(cli.log_format, &cli.log_level) {
        eprintln!("kiln: {e:#}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve(args) => serve(cli.onnxruntime.as_deref(), *args),
        Command::Inspect { model, json } => inspect(cli.onnxruntime.as_deref(), &model, json),
        Command::Predict { model, input } => predict(cli.onnxruntime.as_deref(), &model, &input),
        Command::Bench(args) => bench(cli.onnxruntime.as_deref(), *args),
        Command::Verify { model, model_version, tolerance, json } => {
            verify::run(cli.onnxruntime.as_deref(), &model, model_version, tolerance, json)
        }
        Command::Replay { repository, model, candidate, since, records, limit, tolerance, json } => replay::run(
            cli.onnxruntime.as_deref(),
            &replay::ReplayArgs {
                repository: &repository,
                model: &model,
                version: candidate,
                since,
                records: records.as_deref(),
                limit,
                tolerance,
                json,
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln: {e:#}");
            ExitCode::FAILURE
        }
    }
}

mod replay;
mod serve;
mod verify;

use serve::{ServeArgs, seconds, serve};

/// `90s`, `30m`, `1h`, `2d` (a bare number is seconds).
fn parse_age(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len()));
    let value: f64 =
        number.trim().parse().map_err(|_| format!("'{text}' is not a duration like 90s, 30m, 1h or 2d"))?;
    let seconds = match unit {
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => return Err(format!("unknown unit '{other}' in '{text}': use s, m, h or d")),
    };
    std::time::Duration::try_from_secs_f64(seconds).map_err(|_| format!("'{text}' is not a positive duration"))
}

pub(crate) fn start_runtime(explicit: Option<&Path>) -> Result<()> {
    runtime::ensure(explicit)?;
    Ok(())
}

fn inspect(onnxruntime: Option<&Path>, path: &Path, as_json: bool) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let summary = onnx_proto::summarize(&bytes)?;
    start_runtime(onnxruntime)?;
    let prepared = kiln_backend_ort::PreparedModel::new(bytes, kiln_backend_ort::SessionOptions::default())?;
    if as_json {
        let doc = serde_json::json!({
            "file": path.display().to_string(),
            "ir_version": summary.ir_version,
            "producer": summary.producer,
            "opsets": summary.opsets.iter().map(|(d, v)| serde_json::json!({"domain": d, "version": v})).collect::<Vec<_>>(),
            "inputs": prepared.signature.inputs,
            "outputs": prepared.signature.outputs,
            "labels": prepared.labels,
            "ops": summary.ops,
            "notices": prepared.notices,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("{}", path.display());
    println!("  producer:   {}", if summary.producer.is_empty() { "(unknown)" } else { &summary.producer });
    println!("  ir_version: {}", summary.ir_version);
    let opsets: Vec<String> = summary.opsets.iter().map(|(d, v)| format!("{d} {v}")).collect();
    println!("  opsets:     {}", opsets.join(", "));
    println!("  inputs:");
    for s in &prepared.signature.inputs {
        println!("    {:<24} {:<6} {:?}", s.name, s.datatype, s.shape);
    }
    println!("  outputs:");
    for s in &prepared.signature.outputs {
        match prepared.labels.get(&s.name) {
            Some(labels) => println!("    {:<24} {:<6} {:?}  labels {:?}", s.name, s.datatype, s.shape, labels),
            None => println!("    {:<24} {:<6} {:?}", s.name, s.datatype, s.shape),
        }
    }
    println!("  ops:");
    for (op, count) in &summary.ops {
        println!("    {op:<40} {count}");
    }
    for notice in &prepared.notices {
        println!("  note: {notice}");
    }
    Ok(())
}

fn predict(onnxruntime: Option<&Path>, model: &Path, input: &str) -> Result<()> {
    start_runtime(onnxruntime)?;
    let body = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf).context("cannot read the request from stdin")?;
        buf
    } else {
        std::fs::read(input).with_context(|| format!("cannot read {input}"))?
    };
    let served = repository::load_path(model)?;
    let request = v2::decode_request(&body, None)?;
    let outputs: Vec<String> = request.outputs.iter().map(|o| o.name.clone()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let response =
        runtime.block_on(served.infer(InferRequest { inputs: request.inputs, outputs, ..InferRequest::default() }))?;
    let outputs: Vec<_> = response.outputs.into_iter().map(|t| (t, false)).collect();
    let encoded = v2::encode_response(
        &response.model_name,
        response.model_version,
        request.id.as_deref(),
        request.parameters.as_ref(),
        &outputs,
    );
    println!("{}", String::from_utf8_lossy(&encoded.json));
    Ok(())
}

fn bench(onnxruntime: Option<&Path>, args: BenchArgs) -> Result<()> {
    use kiln_bench::{BenchConfig, Protocol, TargetSpec};
    let protocol = match args.protocol {
        BenchProtocol::RestJson => Protocol::RestJson,
        BenchProtocol::RestBinary => Protocol::RestBinary,
        BenchProtocol::Grpc => Protocol::Grpc,
        BenchProtocol::InProcess => {
            start_runtime(onnxruntime)?;
            Protocol::InProcess
        }
    };
    let duration = seconds(args.duration, "--duration")?;
    let warmup = seconds(args.warmup, "--warmup")?;
    if duration.is_zero() {
        bail!("--duration must be positive");
    }
    if args.rate.is_some_and(|r| !(r.is_finite() && r >= 1e-3)) {
        bail!("--rate must be a number of requests per second, at least 0.001");
    }
    let config = BenchConfig {
        target: TargetSpec {
            protocol,
            url: args.url,
            model: args.model,
            version: args.model_version,
            batch: args.batch.max(1),
            input_file: args.input,
            model_path: args.model_path,
            connections: args.connections,
        },
        concurrency: args.concurrency,
        rate: args.rate,
        duration,
        requests: args.requests,
        warmup,
        progress: !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .thread_name("kiln-bench")
        .build()?;
    let report = runtime.block_on(kiln_bench::run(config))?;
    if let Some(path) = &args.plot {
        std::fs::write(path, report.to_svg()).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(())
}

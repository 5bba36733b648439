"""OpenTelemetry traces against a real OTLP receiver: the collector's own protobuf service
(opentelemetry-proto's TraceService over gRPC, and OTLP/HTTP's /v1/traces with the same
messages), served here. Two kiln processes: B serves the fraud model; A serves the demo's
fraud_ensemble pipeline, a pipeline whose remote step calls B, and SmolLM2. Both export to the
receiver, so a trace crosses processes: the caller's `traceparent` → A's request span →
pipeline → step → model → queue / compute, and A's remote call → B's request span."""

import json
import shutil
import threading
import time
import urllib.request
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ROOT, KilnServer, link_gguf, metric

pytest.importorskip("opentelemetry.proto", reason="opentelemetry-proto is not installed (requirements-test.txt)")
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


def attributes(kvs):
    out = {}
    for kv in kvs:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None
    return out


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span it is sent, with its service name: (service, span)."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.grpc_port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()
        receiver = self

        class Http(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["content-length"]))
                ok = self.path == "/v1/traces" and self.headers["content-type"] == "application/x-protobuf"
                if ok:
                    receiver.keep(trace_service_pb2.ExportTraceServiceRequest.FromString(body), "http")
                answer = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200 if ok else 400)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Http)
        self.http_port = self.http.server_address[1]
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def Export(self, request, context):
        self.keep(request, "grpc")
        return trace_service_pb2.ExportTraceServiceResponse()

    def keep(self, request, transport):
        with self.lock:
            for rs in request.resource_spans:
                service = attributes(rs.resource.attributes).get("service.name")
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append((service, transport, span))

    def trace(self, trace_id_hex):
        with self.lock:
            return [(svc, t, s) for svc, t, s in self.spans if s.trace_id.hex() == trace_id_hex]

    def close(self):
        self.server.stop(0)
        self.http.shutdown()


def wait_for(check, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    return check()


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.close()


def far_pipeline(repo, b):
    """`far`: one remote step that calls `fraud` on server `b`."""
    (repo / "far").mkdir(parents=True)
    (repo / "far" / "pipeline.toml").write_text(
        '[[inputs]]\nname = "input"\ndatatype = "FP32"\nshape = [-1, 30]\n'
        f'[[steps]]\nname = "b"\nremote = {{ url = "http://{b.url}", model = "fraud" }}\ninputs = {{ input = "input" }}\n'
        'outputs = [{ name = "label", datatype = "INT64", shape = [-1] }, '
        '{ name = "probabilities", datatype = "FP32", shape = [-1, 2] }]\n'
        '[[outputs]]\nname = "label"\nfrom = "b.label"\n')


@pytest.fixture(scope="module")
def servers(tmp_path_factory, receiver):
    base = tmp_path_factory.mktemp("traces")
    repo_b = base / "b" / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo_b / "fraud")
    b = KilnServer(repo_b, ["--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}",
                            "--otel-service-name", "kiln-b"])
    repo_a = base / "a" / "models"
    for name in ("fraud", "fraud_lr", "fraud_ensemble", "smollm2"):
        shutil.copytree(ROOT / "examples" / "models" / name, repo_a / name,
                        ignore=lambda d, names: [n for n in names if n.endswith(".gguf")])
    link_gguf(repo_a / "smollm2" / "1" / "model.gguf")
    far_pipeline(repo_a, b)
    a = KilnServer(repo_a, ["--otlp-endpoint", f"http://127.0.0.1:{receiver.http_port}",
                            "--otlp-protocol", "http/protobuf", "--otel-service-name", "kiln-a"])
    yield a, b
    assert a.stop() == 0
    assert b.stop() == 0


ROW = np.random.default_rng(0).normal(size=(1, 30)).astype(np.float32)


def infer(server, model, headers=None):
    body = {"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": ROW.ravel().tolist()}]}
    request = urllib.request.Request(f"http://{server.url}/v2/models/{model}/infer", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=60) as r:
        assert r.status == 200
        return dict(r.headers)


def by_name(spans):
    return {s.name: s for _, _, s in spans}


def test_a_pipeline_request_is_one_trace_under_the_callers_span(servers, receiver):
    a, _ = servers
    infer(a, "fraud_ensemble", {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01", "tracestate": "vendor=1"})
    # Root, pipeline, 5 steps, 2 models with queue + compute each.
    spans = wait_for(lambda: len(receiver.trace(CLIENT_TRACE)) >= 13 and receiver.trace(CLIENT_TRACE))
    assert {svc for svc, _, _ in spans} == {"kiln-a"}
    assert {t for _, t, _ in spans} == {"http"}
    named = by_name(spans)
    root = named["POST /v2/models/{model}/infer"]
    assert root.parent_span_id.hex() == CLIENT_SPAN
    assert root.kind == root.SPAN_KIND_SERVER
    assert root.trace_state == "vendor=1"
    assert attributes(root.attributes)["kiln.model"] == "fraud_ensemble"
    pipeline = named["pipeline fraud_ensemble"]
    assert pipeline.parent_span_id == root.span_id
    steps = {n: s for n, s in named.items() if n.startswith("step ")}
    assert set(steps) == {"step gbc", "step lr", "step blend", "step decide", "step fraud_score"}
    assert all(s.parent_span_id == pipeline.span_id for s in steps.values())
    assert attributes(steps["step gbc"].attributes)["kiln.step.outcome"] == "success"
    model = named["model fraud"]
    assert model.parent_span_id == steps["step gbc"].span_id
    assert named["model fraud_lr"].parent_span_id == steps["step lr"].span_id
    children = [s for _, _, s in spans if s.parent_span_id == model.span_id]
    assert sorted(s.name for s in children) == ["compute", "queue"]
    compute = next(s for s in children if s.name == "compute")
    assert attributes(compute.attributes)["kiln.batch.rows"] >= 1
    for _, _, s in spans:
        assert root.start_time_unix_nano <= s.start_time_unix_nano <= s.end_time_unix_nano <= root.end_time_unix_nano


def test_a_remote_step_carries_the_trace_to_the_next_server(servers, receiver):
    a, _ = servers
    trace = "a" * 32
    infer(a, "far", {"traceparent": f"00-{trace}-{CLIENT_SPAN}-01"})
    spans = wait_for(lambda: {svc for svc, _, _ in receiver.trace(trace)} == {"kiln-a", "kiln-b"}
                     and len(receiver.trace(trace)) >= 8 and receiver.trace(trace))
    remote = next(s for svc, _, s in spans if svc == "kiln-a" and s.name.startswith("remote "))
    assert remote.kind == remote.SPAN_KIND_CLIENT
    b_root = next(s for svc, _, s in spans if svc == "kiln-b" and s.name == "POST /v2/models/{model}/infer")
    assert b_root.parent_span_id == remote.span_id
    assert {t for svc, t, _ in spans if svc == "kiln-b"} == {"grpc"}
    b_model = next(s for svc, _, s in spans if svc == "kiln-b" and s.name == "model fraud")
    assert b_model.parent_span_id == b_root.span_id


def test_grpc_requests_read_traceparent_metadata(servers, receiver):
    _, b = servers
    trace = "b" * 32
    client = grpcclient.InferenceServerClient(url=b.grpc_url)
    inp = grpcclient.InferInput("input", [1, 30], "FP32")
    inp.set_data_from_numpy(ROW)
    client.infer("fraud", [inp], headers={"traceparent": f"00-{trace}-{CLIENT_SPAN}-01"})
    spans = wait_for(lambda: len(receiver.trace(trace)) >= 4 and receiver.trace(trace))
    root = by_name(spans)["inference.GRPCInferenceService/ModelInfer"]
    assert root.parent_span_id.hex() == CLIENT_SPAN
    assert attributes(root.attributes)["kiln.protocol"] == "grpc"


def test_without_a_traceparent_the_trace_id_is_the_logged_request_id(servers, receiver):
    _, b = servers
    headers = infer(b, "fraud")
    request_id = {k.lower(): v for k, v in headers.items()}["kiln-request-id"]
    spans = wait_for(lambda: receiver.trace(request_id))
    root = by_name(spans)["POST /v2/models/{model}/infer"]
    assert root.parent_span_id == b""
    assert attributes(root.attributes)["kiln.request_id"] == request_id


def test_a_malformed_or_unsampled_traceparent_is_no_error(servers, receiver):
    _, b = servers
    bad = "00-zzzz-not-a-trace"
    headers = infer(b, "fraud", {"traceparent": bad})
    request_id = {k.lower(): v for k, v in headers.items()}["kiln-request-id"]
    # A new trace, rooted here.
    assert wait_for(lambda: receiver.trace(request_id))
    # The caller said "not sampled": nothing is exported for it.
    trace = "c" * 32
    infer(b, "fraud", {"traceparent": f"00-{trace}-{CLIENT_SPAN}-00"})
    time.sleep(1.5)
    assert receiver.trace(trace) == []


def test_llm_generations_carry_genai_attributes(servers, receiver):
    a, _ = servers
    trace = "d" * 32
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8,
            "temperature": 0}
    request = urllib.request.Request(f"http://{a.url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     method="POST", headers={"content-type": "application/json",
                                                             "traceparent": f"00-{trace}-{CLIENT_SPAN}-01"})
    with urllib.request.urlopen(request, timeout=120) as r:
        usage = json.loads(r.read())["usage"]
    spans = wait_for(lambda: len(receiver.trace(trace)) >= 2 and receiver.trace(trace))
    named = by_name(spans)
    root = named["POST /v1/chat/completions"]
    generation = named["chat smollm2"]
    assert generation.parent_span_id == root.span_id
    attrs = attributes(generation.attributes)
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.request.model"] == "smollm2"
    assert attrs["gen_ai.request.max_tokens"] == 8
    assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
    assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
    ttft = attrs["gen_ai.server.time_to_first_token"]
    assert 0 < ttft <= (generation.end_time_unix_nano - generation.start_time_unix_nano) / 1e9


def test_a_dead_collector_changes_nothing_for_clients(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    # Nothing listens on port 1.
    s = KilnServer(repo, ["--otlp-endpoint", "http://127.0.0.1:1"])
    try:
        started = time.time()
        for _ in range(50):
            infer(s, "fraud", {"traceparent": f"00-{'e' * 32}-{CLIENT_SPAN}-01"})
        assert time.time() - started < 30
        assert wait_for(lambda: metric(s.metrics(), "kiln_trace_export_failures_total") >= 1)
        assert metric(s.metrics(), "kiln_trace_spans_dropped_total") >= 1
        assert metric(s.metrics(), "kiln_requests_total", model="fraud", outcome="success") == 50
    finally:
        assert s.stop() == 0


def test_the_last_requests_spans_are_sent_at_shutdown(tmp_path, receiver):
    """Spans wait up to half a second to be batched: a server stopped right after answering
    sends them before it exits."""
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    s = KilnServer(repo, ["--otlp-endpoint", f"http://127.0.0.1:{receiver.grpc_port}"])
    trace = "5" * 32
    try:
        infer(s, "fraud", {"traceparent": f"00-{trace}-{CLIENT_SPAN}-01"})
    finally:
        assert s.stop() == 0
    # Read at once: the server has exited, so whatever arrived came before it did.
    named = by_name(receiver.trace(trace))
    assert named["POST /v2/models/{model}/infer"].parent_span_id.hex() == CLIENT_SPAN
    assert {"model fraud", "queue", "compute"} <= set(named), sorted(named)


def test_a_server_that_does_not_trace_passes_the_callers_context_on(servers, receiver, tmp_path):
    """W3C: an intermediary that records nothing still passes `traceparent` on, so the next
    server's spans join the caller's trace under the caller's span."""
    _, b = servers
    repo = tmp_path / "models"
    far_pipeline(repo, b)
    c = KilnServer(repo)  # no --otlp-endpoint
    trace = "6" * 32
    try:
        infer(c, "far", {"traceparent": f"00-{trace}-{CLIENT_SPAN}-01"})
    finally:
        assert c.stop() == 0
    spans = wait_for(lambda: receiver.trace(trace))
    assert {svc for svc, _, _ in spans} == {"kiln-b"}
    root = by_name(spans)["POST /v2/models/{model}/infer"]
    assert root.parent_span_id.hex() == CLIENT_SPAN


def test_an_unsampled_request_passes_not_sampled_on(servers, receiver):
    """A caller's `00` flag reaches the next server, which then traces nothing either (before,
    it started a trace of its own)."""
    a, b = servers
    time.sleep(1.5)  # earlier tests' batches are out
    before = metric(b.metrics(), "kiln_trace_spans_exported_total")
    trace = "7" * 32
    infer(a, "far", {"traceparent": f"00-{trace}-{CLIENT_SPAN}-00"})
    time.sleep(1.5)
    assert metric(b.metrics(), "kiln_trace_spans_exported_total") == before
    assert receiver.trace(trace) == []

"""Cancellation is normal: clients that hang up mid-request leave every gauge and counter right.

A pipeline whose remote step calls a server that accepts and never answers keeps each request
in flight until its client disconnects; kiln then drops the request's future. Afterwards the
in-flight gauge is back to 0 and the request counters and statistics add up.
"""

import json
import re
import shutil
import socket
import threading
import time
import urllib.request

import pytest

from conftest import ROOT, KilnServer, metric
from test_pipelines_remote import remote_pipeline

REQUESTS = 500


class BlackHole:
    """Accepts connections, reads what arrives, never answers."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)

    def close(self):
        self.closed = True
        self.sock.close()
        for c in self.conns:
            c.close()


# Nothing answers, nothing retries, nothing trips a breaker: each request waits for its client.
STUCK = dict(remote='{{ url = "http://127.0.0.1:{port}", model = "fraud" }}',
             extra="timeout_ms = 120000\nretries = 0\nbreaker_failures = 0\nconcurrency = 1000\n")


@pytest.fixture(scope="module")
def stuck_server(tmp_path_factory):
    hole = BlackHole()
    repo = tmp_path_factory.mktemp("cancel") / "models"
    repo.mkdir()
    (repo / "stuck").mkdir()
    remote = STUCK["remote"].format(port=hole.port)
    (repo / "stuck" / "pipeline.toml").write_text(remote_pipeline(remote, extra=STUCK["extra"]))
    shutil.copytree(ROOT / "examples" / "models" / "fraud", repo / "fraud")
    server = KilnServer(repo, ["--records", "off", "--dashboard", "off"])
    yield server
    server.stop()
    hole.close()


def hang_up(server, body):
    """Sends one request and closes the connection before any answer."""
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(
        b"POST /v2/models/stuck/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    # Long enough for kiln to parse the request and start it even on a loaded machine (a
    # client that leaves before that was never a request: nothing counts it).
    time.sleep(0.1)
    s.close()


def test_disconnected_clients_leave_the_gauges_and_counters_right(stuck_server):
    body = json.dumps({"inputs": [{"name": "input", "shape": [1, 30], "datatype": "FP32", "data": [0.1] * 30}]}).encode()
    threads = [threading.Thread(target=lambda: [hang_up(stuck_server, body) for _ in range(REQUESTS // 20)])
               for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    deadline = time.time() + 30
    while True:
        text = stuck_server.metrics()
        in_flight = metric(text, "kiln_requests_in_flight", model="stuck")
        cancelled = metric(text, "kiln_requests_total", model="stuck", outcome="cancelled")
        if (in_flight == 0 and cancelled == REQUESTS) or time.time() > deadline:
            break
        time.sleep(0.2)
    assert 'kiln_requests_in_flight{model="stuck"' in text, "no in-flight gauge for the pipeline"
    assert in_flight == 0, f"in-flight gauge stuck at {in_flight}"
    assert cancelled == REQUESTS, f"{cancelled} of {REQUESTS} counted as cancelled"
    every = metric(text, "kiln_requests_total", model="stuck")
    assert every == REQUESTS, f"requests_total adds up to {every}, not {REQUESTS}"
    with urllib.request.urlopen(f"http://{stuck_server.url}/v2/models/stuck/stats", timeout=10) as r:
        stats = json.load(r)["model_stats"][0]["inference_stats"]
    assert stats["success"]["count"] + stats["fail"]["count"] == REQUESTS, stats
    # The server is fine afterwards: the local model still answers.
    req = urllib.request.Request(
        f"http://{stuck_server.url}/v2/models/fraud/infer", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    assert re.search(r'kiln_requests_in_flight\{[^}]*model="fraud"[^}]*\} 0', stuck_server.metrics())

"""Starts the real `kiln` binary on free ports over a copy of the demo + test models."""

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kiln_bin():
    path = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))
    if not os.path.exists(path):
        pytest.fail(f"kiln binary not found at {path}; run `cargo build -p kiln-cli` or scripts/test.sh")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KilnServer:
    def __init__(self, repository, extra_args=()):
        self.port = free_port()
        self.grpc_port = free_port()
        self.grpc_url = f"127.0.0.1:{self.grpc_port}"
        self.metrics_port = free_port()
        self.url = f"127.0.0.1:{self.port}"  # tritonclient wants no scheme
        self.log = open(repository.parent / "kiln.log", "w+")
        self.proc = subprocess.Popen(
            [kiln_bin(), "serve", str(repository), "--http-port", str(self.port),
             "--grpc-port", str(self.grpc_port), "--metrics-port", str(self.metrics_port), *extra_args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln exited early:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"kiln did not become ready:\n{self.logs()}")

    def logs(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=20)
        self.log.close()
        return code


def make_repository(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(ROOT / "examples" / "models", repo)
    for model in (ROOT / "testdata" / "models").iterdir():
        shutil.copytree(model, repo / model.name)
    return repo


@pytest.fixture(scope="session")
def kiln(tmp_path_factory):
    server = KilnServer(make_repository(tmp_path_factory.mktemp("kiln")))
    yield server
    assert server.stop() == 0, "kiln should exit 0 on SIGTERM"


@pytest.fixture
def fixture():
    def load(name):
        with open(ROOT / "examples" / "fixtures" / f"{name}.json") as f:
            return json.load(f)

    return load

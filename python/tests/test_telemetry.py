"""kiln sends no telemetry: ONNX Runtime's (the 1.31 wheel's library writes a device id and
queues an event under $HOME/.cache/Microsoft when it loads) is off before the library loads,
in the server and in the Python extension. HOME points at an empty folder; it stays empty."""

import json
import os
import subprocess
import sys
import urllib.request

from conftest import ROOT, KilnServer, make_repository


def files_under(folder):
    return [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]


def test_the_server_writes_nothing_under_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    server = KilnServer(make_repository(tmp_path), ["--records", "off"], env=env)
    try:
        body = json.dumps({"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                       "data": [5.1, 3.5, 1.4, 0.2]}]}).encode()
        with urllib.request.urlopen(f"http://{server.url}/v2/models/iris/infer", data=body, timeout=10) as r:
            assert r.status == 200
    finally:
        assert server.stop() == 0
    assert files_under(home) == []


def test_the_python_extension_writes_nothing_under_home(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env["HOME"] = str(home)
    code = (
        "import kiln, numpy as np\n"
        f"m = kiln.Model({str(ROOT / 'examples' / 'models' / 'iris')!r})\n"
        "print(m.predict(np.array([[5.1, 3.5, 1.4, 0.2]], dtype=np.float32))['output_label'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "setosa" in out.stdout
    assert files_under(home) == []

"""Train -> export -> verify -> serve -> call, end to end (run by the tests).

    python examples/quickstart.py [--keep]     # needs `kiln` built and `pip install ./python`
"""

import json
import os
import subprocess
import sys
import tempfile
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import GradientBoostingClassifier

import kiln

# --- the part a data scientist writes (8 lines) ---------------------------------------------
X, y = load_breast_cancer(return_X_y=True)
clf = GradientBoostingClassifier(n_estimators=50, random_state=0).fit(X, y)
repo = tempfile.mkdtemp(prefix="kiln-quickstart-")
kiln.export.sklearn(clf, X[:100], repo, "cancer")          # repo/cancer/1/model.onnx + parity.json
print(kiln.verify(repo, "cancer"))                          # kiln == scikit-learn, or it raises
# shell:  kiln serve REPO            then, from any Python:
client = httpclient.InferenceServerClient(url="127.0.0.1:8000")
# ---------------------------------------------------------------------------------------------

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.environ.get("KILN_BIN", os.path.join(root, "target", "debug", "kiln"))
# Port 0: the kernel picks free ports; kiln's JSON log says which.
server = subprocess.Popen([binary, "serve", repo, "--http-port", "0", "--grpc-port", "0", "--metrics-port", "0",
                           "--log-format", "json"], stderr=subprocess.PIPE, text=True)
try:
    address = None
    for line in server.stderr:
        if "kiln listening on http://" in line:
            address = json.loads(line)["message"].split("http://", 1)[1]
            break
    assert address, "kiln did not start"
    urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=5)
    client = httpclient.InferenceServerClient(url=address)
    x = X[:5].astype(np.float32)
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("cancer", [inp])
    served = result.as_numpy("probabilities")
    assert (result.as_numpy("label") == clf.predict(X[:5])).all()
    assert np.abs(served - clf.predict_proba(x)).max() < 1e-5
    print("served probabilities equal scikit-learn's:", served.round(4).tolist())
finally:
    server.terminate()
    server.wait(timeout=20)
sys.exit(0)

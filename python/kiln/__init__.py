"""kiln in Python: the same engine as `kiln serve`, in-process, on numpy arrays.

    import kiln
    model = kiln.Model("examples/models/fraud")        # a repository model folder or an .onnx file
    out = model.predict(x)                              # dict of output name -> numpy array
    proba = model.predict_proba(x)                      # scikit-learn style
    pipe = kiln.Pipeline("examples/models", "fraud_ensemble")  # a repository's pipeline
    out, steps = pipe.run(x, trace=True)                # outputs and each step's timing
    kiln.verify("repo", "my_model")                     # parity with the Python model it came from
    llm = kiln.LLM("examples/models", "smollm2")        # a GGUF LLM on llama.cpp, in-process
    llm.chat([{"role": "user", "content": "Hi"}], response_format=..., tools=...)

kiln loads the `libonnxruntime` of this interpreter's `onnxruntime` package (override with
KILN_ONNXRUNTIME or ORT_DYLIB_PATH), so it runs the same runtime your prototype used.
"""

import atexit
import glob
import importlib.util
import os

# The onnxruntime 1.31 wheel's library writes a device id and queues a telemetry event under
# $HOME/.cache/Microsoft/ when it loads, unless this is set first (too late if onnxruntime was
# already imported and its environment created). Respect a value the user chose.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from . import _kiln
from ._kiln import LLM, KilnError, Model, Pipeline, TextStream, __version__, tokenize


def _runtime_path():
    for var in ("KILN_ONNXRUNTIME", "ORT_DYLIB_PATH"):
        if os.environ.get(var):
            return os.environ[var]
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("kiln needs the onnxruntime package: pip install onnxruntime==1.31.1")
    capi = os.path.join(spec.submodule_search_locations[0], "capi")
    found = sorted(glob.glob(os.path.join(capi, "libonnxruntime.so*")) + glob.glob(os.path.join(capi, "libonnxruntime*.dylib")))
    if not found:
        raise ImportError(f"no libonnxruntime in {capi}; reinstall onnxruntime==1.31.1")
    return found[-1]


RUNTIME = _kiln.init_runtime(_runtime_path())

# LLM schedulers end (their threads joined) before the interpreter tears the process down.
atexit.register(_kiln.stop_llms)

from .verify import VerificationError, verify  # noqa: E402  (needs the runtime)

__all__ = ["Model", "Pipeline", "LLM", "TextStream", "KilnError", "tokenize", "VerificationError", "verify", "export", "RUNTIME", "__version__"]


def __getattr__(name):
    if name == "export":  # skl2onnx is imported only when export is used
        import importlib

        return importlib.import_module(".export", __name__)
    raise AttributeError(name)

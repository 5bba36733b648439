//! `GET /openapi.json`: an OpenAPI 3.1 description of kiln's REST API — the KServe v2
//! endpoints and kiln's own (prediction log, feedback, quality, embeddings, LLM completions,
//! the dashboard's JSON).

use axum::Json;
use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn ok_json(description: &str, schema: &Value) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": schema}}})
}

fn query(name: &str, description: &str, schema: &Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn path(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
}

/// The document (built once per call; it is small).
pub fn openapi() -> Value {
    let infer = json!({
        "summary": "Run a model or pipeline (JSON tensors, or the binary tensor extension with Inference-Header-Content-Length)",
        "parameters": [path("model")],
        "requestBody": {"required": true, "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/InferRequest"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
        }},
        "responses": {
            "200": ok_json("The outputs; header kiln-request-id names the logged prediction", &json!({"$ref": "#/components/schemas/InferResponse"})),
            "400": error_response("Malformed request, or inputs that do not match the model (names which tensor, shape or datatype)"),
            "404": error_response("Unknown model or version"),
            "413": error_response("Body over --max-body-bytes"),
            "429": error_response("The model's queue is full"),
            "503": error_response("Model not ready, a pipeline's remote step failed, or (durable records) the prediction could not be logged"),
            "504": error_response("The request's timeout passed")
        }
    });
    let simple = |summary: &str| json!({"summary": summary, "responses": {"200": {"description": "OK"}}});
    let mut document = json!({
        "openapi": "3.1.0",
        "info": {
            "title": "kiln",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "KServe v2 / Open Inference Protocol over REST, plus kiln's prediction log, feedback and model quality."
        },
        "paths": {
            "/v2": {"get": simple("Server metadata")},
            "/v2/health/live": {"get": simple("Liveness")},
            "/v2/health/ready": {"get": {"summary": "Readiness", "responses": {"200": {"description": "Ready"}, "503": {"description": "Shutting down"}}}},
            "/v2/models/{model}": {"get": {"summary": "Model metadata", "parameters": [path("model")],
                "responses": {"200": {"description": "Inputs and outputs"}, "404": error_response("Unknown model")}}},
            "/v2/models/{model}/ready": {"get": {"summary": "Model readiness", "parameters": [path("model")],
                "responses": {"200": {"description": "Ready"}, "503": {"description": "Not ready"}, "404": error_response("Unknown model")}}},
            "/v2/models/{model}/infer": {"post": infer},
            "/v2/models/{model}/stats": {"get": {"summary": "Model statistics", "parameters": [path("model")], "responses": {"200": {"description": "Counts and durations"}}}},
            "/v2/repository/index": {"post": simple("Every model and version with its state")},
            "/v2/repository/models/{model}/load": {"post": {"summary": "Load a model (--model-control explicit)", "parameters": [path("model")], "responses": {"200": {"description": "Loaded"}, "400": error_response("Not in explicit mode, or the model failed to load")}}},
            "/v2/repository/models/{model}/unload": {"post": {"summary": "Unload a model (--model-control explicit)", "parameters": [path("model")], "responses": {"200": {"description": "Unloaded"}}}},
            "/metrics": {"get": simple("Prometheus metrics")},
            "/v1/embeddings": {"post": simple("OpenAI-compatible embeddings of a text_embedding model")},
            "/v1/predictions": {"get": {
                "summary": "Logged predictions, newest first, filtered and paginated",
                "parameters": [
                    query("model", "Model name", &json!({"type": "string"})),
                    query("version", "Model version", &json!({"type": "integer"})),
                    query("outcome", "success or error", &json!({"type": "string", "enum": ["success", "error"]})),
                    query("key", "The request's own v2 id", &json!({"type": "string"})),
                    query("since", "From this time, ms since the Unix epoch", &json!({"type": "integer"})),
                    query("until", "Before this time, ms since the Unix epoch", &json!({"type": "integer"})),
                    query("limit", "Rows per page, 1 to 1000 (default 100)", &json!({"type": "integer", "minimum": 1, "maximum": 1000})),
                    query("cursor", "next_cursor of the previous page", &json!({"type": "string"})),
                    query("tensors", "Include inputs and outputs", &json!({"type": "boolean"}))
                ],
                "responses": {
                    "200": ok_json("A page", &json!({"type": "object", "required": ["predictions", "next_cursor"], "properties": {
                        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                        "next_cursor": {"type": ["string", "null"]}}})),
                    "400": error_response("A bad filter"),
                    "404": error_response("The prediction log is off"),
                    "503": error_response("The log's database failed")
                }
            }},
            "/v1/predictions/{id}": {"get": {
                "summary": "One logged prediction with its tensors and feedback",
                "parameters": [path("id")],
                "responses": {"200": ok_json("The prediction", &json!({"$ref": "#/components/schemas/Prediction"})), "404": error_response("Not in the log")}
            }},
            "/v1/feedback": {"post": {
                "summary": "The true label(s) of a prediction, by kiln-request-id (id) or the request's own id (key)",
                "requestBody": {"required": true, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Feedback"}}}},
                "responses": {
                    "201": ok_json("Stored; matched says whether the prediction is in the log yet", &json!({"type": "object", "required": ["id", "matched"], "properties": {"id": {"type": "string"}, "matched": {"type": "boolean"}}})),
                    "400": error_response("Malformed feedback"),
                    "404": error_response("The prediction log is off")
                }
            }},
            "/v1/models/{model}/quality": {"get": {
                "summary": "Volume, error rate, latency percentiles and, where feedback exists, accuracy, precision, recall and confusion counts per time bucket",
                "parameters": [path("model"),
                    query("since", "ms since the Unix epoch (default: 24 h before until)", &json!({"type": "integer"})),
                    query("until", "ms since the Unix epoch (default: now)", &json!({"type": "integer"})),
                    query("bucket", "Seconds per bucket (default 3600)", &json!({"type": "integer", "minimum": 1}))],
                "responses": {"200": ok_json("Quality", &json!({"$ref": "#/components/schemas/Quality"})), "400": error_response("A bad range"), "404": error_response("The prediction log is off")}
            }},
            "/v1/models/{model}/drift": {"get": {
                "summary": "Per feature, a version's recent inputs and outputs against a reference (the export's sample or an earlier window): PSI, Kolmogorov-Smirnov, chi-squared",
                "parameters": [path("model"),
                    query("version", "Default: the version served now", &json!({"type": "integer"})),
                    query("window", "Seconds of the recent window (default 3600)", &json!({"type": "integer", "minimum": 1})),
                    query("until", "ms since the Unix epoch (default: now)", &json!({"type": "integer"})),
                    query("reference", "sample or window", &json!({"type": "string", "enum": ["sample", "window"]})),
                    query("reference_since", "ms since the Unix epoch", &json!({"type": "integer"})),
                    query("reference_until", "ms since the Unix epoch", &json!({"type": "integer"})),
                    query("threshold", "PSI above which a feature has drifted (default 0.2)", &json!({"type": "number", "exclusiveMinimum": 0})),
                    query("limit", "Most log rows per window (default 5000)", &json!({"type": "integer", "minimum": 1, "maximum": 50000}))],
                "responses": {"200": ok_json("Drift", &json!({"type": "object", "required": ["model", "version", "state", "features", "not_compared"], "properties": {
                    "state": {"type": "string", "enum": ["ok", "drifted", "insufficient_data"]},
                    "features": {"type": "array", "items": {"type": "object"}}, "not_compared": {"type": "array", "items": {"type": "object"}}}})),
                    "400": error_response("A bad parameter"), "404": error_response("The prediction log is off, the model is unknown, or it has no export sample")}
            }},
            "/v1/models/{model}/rollout": {"get": {
                "summary": "A model's [rollout]: each version's role (primary, canary, shadow), requests, errors and latency, and the shadow's agreement with the answers callers got",
                "parameters": [path("model")],
                "responses": {"200": ok_json("Rollout", &json!({"type": "object", "required": ["model", "versions"], "properties": {
                    "versions": {"type": "array", "items": {"type": "object"}}, "shadow_comparison": {"type": ["object", "null"]}}})),
                    "404": error_response("Unknown model, or no [rollout] in its config.toml")}
            }},
            "/v1/dashboard/models": {"get": {
                "summary": "The dashboard's model list: every model and pipeline with versions, states, load errors, signature, scheduling settings and a pipeline's steps",
                "responses": {"200": ok_json("Models", &json!({"type": "object", "required": ["models"], "properties": {
                    "records": {"type": "boolean"}, "models": {"type": "array", "items": {"type": "object"}}}})),
                    "404": error_response("The dashboard is off (--dashboard off)")}
            }},
            "/v1/dashboard/live": {"get": {
                "summary": "Per model, one point per sampling interval over the last minutes: requests/s, errors/s, p50/p99 latency, rows per execution",
                "responses": {"200": ok_json("The live window", &json!({"type": "object", "required": ["interval_s", "models"], "properties": {
                    "interval_s": {"type": "number"}, "window_s": {"type": "number"},
                    "models": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "object"}}}}})),
                    "404": error_response("The dashboard is off (--dashboard off)")}
            }}
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "Tensor": {"type": "object", "required": ["name", "shape", "datatype"], "properties": {
                "name": {"type": "string"}, "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]},
                "parameters": {"type": "object"}, "data": {"type": "array"}}},
            "InferRequest": {"type": "object", "required": ["inputs"], "properties": {
                "id": {"type": "string"}, "parameters": {"type": "object"},
                "inputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}},
                "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}}}}}},
            "InferResponse": {"type": "object", "required": ["model_name", "outputs"], "properties": {
                "model_name": {"type": "string"}, "model_version": {"type": "string"}, "id": {"type": "string"}, "parameters": {"type": "object"},
                "outputs": {"type": "array", "items": {"$ref": "#/components/schemas/Tensor"}}}},
            "Prediction": {"type": "object", "required": ["id", "model", "version", "protocol", "ts_ms", "latency_us", "outcome", "rows", "truncated"], "properties": {
                "id": {"type": "string"}, "client_key": {"type": ["string", "null"]}, "model": {"type": "string"}, "version": {"type": "integer"},
                "protocol": {"type": "string"}, "ts_ms": {"type": "integer"}, "latency_us": {"type": "integer"}, "outcome": {"type": "string"},
                "error": {"type": ["string", "null"]}, "rows": {"type": "integer"}, "inputs": {"type": "object"}, "outputs": {"type": "object"},
                "labels": {"type": ["array", "null"], "items": {"type": "string"}}, "truncated": {"type": "boolean"},
                "feedback": {"type": "array", "items": {"type": "object"}}}},
            "Feedback": {"type": "object", "properties": {
                "id": {"type": "string", "description": "kiln-request-id of the prediction"},
                "key": {"type": "string", "description": "the prediction request's own v2 id"},
                "label": {"type": ["string", "number", "boolean"]},
                "labels": {"type": "array", "items": {"type": ["string", "number", "boolean"]}, "minItems": 1}}},
            "Quality": {"type": "object", "required": ["model", "since_ms", "until_ms", "bucket_seconds", "total", "buckets"], "properties": {
                "model": {"type": "string"}, "since_ms": {"type": "integer"}, "until_ms": {"type": "integer"}, "bucket_seconds": {"type": "integer"},
                "total": {"$ref": "#/components/schemas/QualityBucket"},
                "buckets": {"type": "array", "items": {"$ref": "#/components/schemas/QualityBucket"}}}},
            "QualityBucket": {"type": "object", "properties": {
                "start_ms": {"type": "integer"}, "requests": {"type": "integer"}, "errors": {"type": "integer"}, "error_rate": {"type": "number"},
                "latency_us": {"type": ["object", "null"], "properties": {"p50": {"type": "integer"}, "p95": {"type": "integer"}, "p99": {"type": "integer"}, "max": {"type": "integer"}}},
                "labeled_rows": {"type": "integer"}, "accuracy": {"type": ["number", "null"]},
                "classes": {"type": "object", "additionalProperties": {"type": "object", "properties": {"precision": {"type": ["number", "null"]}, "recall": {"type": ["number", "null"]}, "support": {"type": "integer"}}}},
                "confusion": {"type": "array", "items": {"type": "object", "properties": {"true": {"type": "string"}, "predicted": {"type": "string"}, "count": {"type": "integer"}}}}}}
        }}
    });
    // Vector collections (built apart: one json! of every path passes the macro recursion limit).
    document["paths"]["/v1/rerank"] = json!({"post": simple("Rerank documents for a query with a cross-encoder (kind = \"rerank\"); Cohere/Jina response shape")});
    document["paths"]["/rerank"] =
        json!({"post": simple("Rerank: text-embeddings-inference's request and response shape")});
    document["paths"]["/v1/collections"] = json!({"get": simple("Every vector collection (kind = \"vector_index\") with its count, dim, metric and index state")});
    document["paths"]["/v1/collections/{name}"] = json!({"get": {"summary": "One collection: count, dim, metric, index settings and state", "parameters": [path("name")],
                "responses": {"200": ok_json("The collection", &json!({"type": "object"})), "404": error_response("Unknown collection")}}});
    document["paths"]["/v1/collections/{name}/points"] = json!({"put": {
        "summary": "Upsert points (vector, or text through the collection's embedder); committed to the points store before the answer",
        "parameters": [path("name")],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["points"], "properties": {
            "points": {"type": "array", "minItems": 1, "maxItems": 4096, "items": {"type": "object", "required": ["id"], "properties": {
                "id": {"type": "string"}, "vector": {"type": "array", "items": {"type": "number"}}, "text": {"type": "string"},
                "payload": {"type": "object"}}}}}}}}},
        "responses": {"200": ok_json("Upserted", &json!({"type": "object", "properties": {"upserted": {"type": "integer"}, "seq": {"type": ["integer", "null"]}, "durable": {"type": "boolean"}}})),
            "400": error_response("A bad point (names which one and why); nothing is written"), "404": error_response("Unknown collection"),
            "413": error_response("Body over --max-body-bytes"), "503": error_response("The points store failed; nothing was written")}
    }});
    document["paths"]["/v1/collections/{name}/points/delete"] = json!({"post": {
        "summary": "Delete points by id",
        "parameters": [path("name")],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "required": ["ids"], "properties": {
            "ids": {"type": "array", "minItems": 1, "maxItems": 4096, "items": {"type": "string"}}}}}}},
        "responses": {"200": ok_json("Deleted", &json!({"type": "object"})), "400": error_response("A bad request"),
            "404": error_response("Unknown collection"), "503": error_response("The points store failed")}
    }});
    document["paths"]["/v1/collections/{name}/search"] = json!({"post": {
        "summary": "The k nearest points to a vector (or a text, with an embedder), optionally filtered on payload fields (equality, in)",
        "parameters": [path("name")],
        "requestBody": {"required": true, "content": {"application/json": {"schema": {"type": "object", "properties": {
            "vector": {"type": "array", "items": {"type": "number"}}, "text": {"type": "string"},
            "k": {"type": "integer", "minimum": 1}, "filter": {"type": "object"}, "with_payload": {"type": "boolean"}}}}}},
        "responses": {"200": ok_json("Closest first", &json!({"type": "object", "required": ["results"], "properties": {
            "results": {"type": "array", "items": {"type": "object", "required": ["id", "score"], "properties": {
                "id": {"type": "string"}, "score": {"type": "number"}, "payload": {}}}}, "metric": {"type": "string"}}})),
            "400": error_response("Wrong dimension, NaN, k out of range, a bad filter"), "404": error_response("Unknown collection"),
            "503": error_response("The collection is still loading its points")}
    }});
    // OpenAI-compatible LLM routes (kept out of the literal above, which is at serde_json's
    // macro recursion limit).
    let paths = &mut document["paths"];
    paths["/v1/chat/completions"] = json!({"post": simple(
        "OpenAI-compatible chat completion of an LLM (kind = \"llm\"), whole or streamed as server-sent events")});
    paths["/v1/completions"] =
        json!({"post": simple("OpenAI-compatible text completion of an LLM, whole or streamed")});
    paths["/v1/models"] = json!({"get": simple("Embedding models and LLMs, in OpenAI's list shape")});
    document
}

pub async fn document() -> Json<Value> {
    Json(openapi())
}

//! The REST face (axum): each area exposes `routes()` and this module merges them, adds
//! `/metrics` and the 404 fallback, and owns the one bounded body reader every route that
//! reads a body goes through.

pub mod chat;
pub mod collections;
pub mod dashboard;
pub mod openai;
pub mod records_api;
pub mod rerank;
pub mod rollout;
pub mod v2;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::error::{ApiError, Kind};
use crate::state::AppState;

/// Every REST route.
pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(v2::routes())
        .merge(openai::routes())
        .merge(rerank::routes())
        .merge(chat::routes())
        .merge(records_api::routes())
        .merge(rollout::routes())
        .merge(collections::routes())
        .merge(dashboard::routes())
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(crate::openapi::document))
        .fallback(not_found)
        // Routes that read a body do it through `read_body`, with a JSON error at the limit.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// The router of the separate metrics port: `GET /metrics` only.
pub fn metrics_router(state: AppState) -> Router {
    Router::new().route("/metrics", get(metrics)).fallback(not_found).with_state(state)
}

/// Reads a request body of at most `limit` bytes. A declared `Content-Length` over the limit
/// is refused before a byte is read; a body without one (chunked) is cut at the limit. Either
/// way no more than `limit` bytes are ever held.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize, flag: &str) -> Result<Bytes, ApiError> {
    let too_large =
        || ApiError::new(Kind::TooLarge, format!("request body exceeds the limit of {limit} bytes ({flag})"));
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        // to_bytes reports both "too large" and transport errors; tell them apart.
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        let (mut over, mut late) = (false, None);
        while let Some(err) = source {
            over |= err.is::<http_body_util::LengthLimitError>();
            late = late.or_else(|| err.downcast_ref::<crate::deadlines::BodyTimeout>());
            source = err.source();
        }
        match (over, late) {
            (true, _) => too_large(),
            (false, Some(late)) => ApiError::new(Kind::BodyTimeout, late.to_string()),
            (false, None) => ApiError::bad_request(format!("cannot read the request body: {e}")),
        }
    })
}

/// Bearer-token middleware for the REST and metrics ports: refusals answer 401/403 here,
/// before any route runs.
pub async fn auth_layer(
    State(tokens): State<std::sync::Arc<crate::auth::TokenFile>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let access = crate::auth::rest_access(request.uri().path());
    match tokens.check(request.headers().get(header::AUTHORIZATION), access) {
        Ok(()) => next.run(request).await,
        Err(refusal) => ApiError::from(refusal).into_response(),
    }
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let render = state.metrics.ok_or_else(|| ApiError::not_found("metrics are off (--metrics off)"))?;
    let text = tokio::task::spawn_blocking(move || render())
        .await
        .map_err(|e| ApiError::new(Kind::Internal, format!("metrics rendering failed: {e}")))?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4"))], text).into_response())
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no endpoint {} {}; see the KServe v2 protocol (e.g. POST /v2/models/<model>/infer)",
        request.method(),
        request.uri().path()
    ))
}

//! The one request error of the server and the only place errors become status codes: an
//! [`ApiError`] is an HTTP response (`{"error": ...}`, or OpenAI's shape through
//! [`OpenAiError`]) and a gRPC [`tonic::Status`]. Engine errors, decode errors, limit
//! refusals, auth refusals and prediction-log failures all arrive here through `From`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kiln_records::RecordsError;
use kiln_serving::EngineError;
use serde_json::json;

/// What went wrong, independent of the transport that reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The request is malformed or does not fit the model.
    BadRequest,
    /// No (valid) bearer token.
    Unauthenticated,
    /// A token without the scope the endpoint needs.
    Forbidden,
    NotFound,
    /// A body or message over its limit.
    TooLarge,
    /// A full queue: retry later.
    Overloaded,
    /// The server's mode does not allow this (e.g. load/unload without explicit control).
    Precondition,
    /// Not ready, shutting down, or a dependency (the prediction log's database) failed.
    Unavailable,
    /// The request's deadline passed.
    Timeout,
    /// The client did not send its body in time (`--body-timeout-secs`).
    BodyTimeout,
    Internal,
}

impl Kind {
    pub fn http(self) -> StatusCode {
        match self {
            Kind::BadRequest | Kind::Precondition => StatusCode::BAD_REQUEST,
            Kind::Unauthenticated => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Overloaded => StatusCode::TOO_MANY_REQUESTS,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Kind::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn grpc(self) -> tonic::Code {
        match self {
            Kind::BadRequest => tonic::Code::InvalidArgument,
            Kind::Unauthenticated => tonic::Code::Unauthenticated,
            Kind::Forbidden => tonic::Code::PermissionDenied,
            Kind::NotFound => tonic::Code::NotFound,
            Kind::TooLarge | Kind::Overloaded => tonic::Code::ResourceExhausted,
            Kind::Precondition => tonic::Code::FailedPrecondition,
            Kind::Unavailable => tonic::Code::Unavailable,
            Kind::Timeout | Kind::BodyTimeout => tonic::Code::DeadlineExceeded,
            Kind::Internal => tonic::Code::Internal,
        }
    }
}

/// A refused or failed request, with a message that names what was wrong.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub kind: Kind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        ApiError { kind, message: message.into() }
    }

    /// How a request that failed with this error ended, for statistics and metrics.
    pub fn outcome(&self) -> kiln_serving::Outcome {
        use kiln_serving::Outcome;
        match self.kind {
            Kind::BadRequest | Kind::TooLarge | Kind::NotFound | Kind::Precondition => Outcome::Invalid,
            Kind::Overloaded => Outcome::Overloaded,
            Kind::Timeout | Kind::BodyTimeout => Outcome::Timeout,
            Kind::Unauthenticated | Kind::Forbidden | Kind::Unavailable | Kind::Internal => Outcome::Error,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(Kind::BadRequest, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(Kind::NotFound, message)
    }

    pub fn status(&self) -> StatusCode {
        self.kind.http()
    }

    fn log(&self) {
        if self.kind == Kind::Internal || self.kind == Kind::Unavailable {
            tracing::warn!(status = self.status().as_u16(), error = %self.message, "request failed");
        } else {
            tracing::debug!(status = self.status().as_u16(), error = %self.message, "request refused");
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let kind = match &e {
            EngineError::ModelNotFound(_) | EngineError::VersionNotFound { .. } => Kind::NotFound,
            EngineError::NotReady(_) | EngineError::LoadFailed { .. } | EngineError::Unavailable(_) => {
                Kind::Unavailable
            }
            EngineError::Validation(_) | EngineError::InvalidRequest(_) => Kind::BadRequest,
            EngineError::Overloaded(_) => Kind::Overloaded,
            EngineError::ModelControl(_) => Kind::Precondition,
            EngineError::Timeout(_) => Kind::Timeout,
            EngineError::Repository(_) | EngineError::Backend(_) => Kind::Internal,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<kiln_protocol::v2::DecodeError> for ApiError {
    fn from(e: kiln_protocol::v2::DecodeError) -> Self {
        ApiError::bad_request(e.0)
    }
}

impl From<crate::auth::Refusal> for ApiError {
    fn from(r: crate::auth::Refusal) -> Self {
        match r {
            crate::auth::Refusal::Unauthenticated(m) => ApiError::new(Kind::Unauthenticated, m),
            crate::auth::Refusal::Forbidden(m) => ApiError::new(Kind::Forbidden, m),
        }
    }
}

impl From<RecordsError> for ApiError {
    /// Durable mode: the answer exists but its row was not committed.
    fn from(e: RecordsError) -> Self {
        ApiError::new(Kind::Unavailable, format!("the prediction was computed but not logged: {e}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.status();
        let mut response = (status, axum::Json(json!({ "error": self.message }))).into_response();
        if self.kind == Kind::Unauthenticated {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        e.log();
        tonic::Status::new(e.kind.grpc(), e.message)
    }
}

/// An error in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
pub struct OpenAiError {
    pub error: ApiError,
    /// The request field at fault, when one is.
    pub param: Option<&'static str>,
}

impl OpenAiError {
    pub fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        OpenAiError { error: ApiError::bad_request(message), param: Some(param) }
    }
}

impl<E: Into<ApiError>> From<E> for OpenAiError {
    fn from(e: E) -> Self {
        OpenAiError { error: e.into(), param: None }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        self.error.log();
        let status = self.error.status();
        let kind = match status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        };
        let body = json!({"error": {"message": self.error.message, "type": kind, "param": self.param, "code": null}});
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_error_has_one_http_and_one_grpc_code() {
        let cases = [
            (EngineError::ModelNotFound("m".into()), 404, tonic::Code::NotFound),
            (EngineError::Overloaded("full".into()), 429, tonic::Code::ResourceExhausted),
            (EngineError::Timeout("late".into()), 504, tonic::Code::DeadlineExceeded),
            (EngineError::ModelControl("explicit".into()), 400, tonic::Code::FailedPrecondition),
            (EngineError::InvalidRequest("bad".into()), 400, tonic::Code::InvalidArgument),
            (EngineError::Backend("boom".into()), 500, tonic::Code::Internal),
        ];
        for (e, http, grpc) in cases {
            let api = ApiError::from(e);
            assert_eq!(api.status().as_u16(), http, "{}", api.message);
            assert_eq!(tonic::Status::from(api).code(), grpc);
        }
    }

    #[test]
    fn refusals_keep_their_codes_and_the_bearer_challenge() {
        let refusal = ApiError::from(crate::auth::Refusal::Unauthenticated("needs a token"));
        let response = refusal.clone().into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers().get(header::WWW_AUTHENTICATE).map(HeaderValue::as_bytes), Some(&b"Bearer"[..]));
        assert_eq!(tonic::Status::from(refusal).code(), tonic::Code::Unauthenticated);
        let forbidden = ApiError::from(crate::auth::Refusal::Forbidden("no admin".into()));
        assert_eq!(tonic::Status::from(forbidden).code(), tonic::Code::PermissionDenied);
    }
}

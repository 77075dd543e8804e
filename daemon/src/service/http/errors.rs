//! Errors as HTTP clients expect them: the status each failure has in OpenAI's API, OpenAI's
//! error object (`{"error": {"message", "type", "param", "code"}}`) and Ollama's
//! (`{"error": "message"}`), and `Retry-After` where waiting helps.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::schema::ErrorCode;

/// Which API's error shape a response takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Ollama,
}

/// A failed HTTP request.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// OpenAI's `type`: `invalid_request_error`, `authentication_error`, ...
    pub kind: &'static str,
    /// OpenAI's `code` (the intake's error code where there is one).
    pub code: String,
    pub message: String,
    /// The request's field at fault, if known.
    pub param: Option<String>,
    /// Seconds the client should wait before trying again.
    pub retry_after: Option<u64>,
    pub dialect: Dialect,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        kind: &'static str,
        code: &str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            kind,
            code: code.to_string(),
            message: message.into(),
            param: None,
            retry_after: None,
            dialect: Dialect::OpenAi,
        }
    }

    /// The status and shape of an intake error final.
    pub fn from_code(code: &str, message: String) -> ApiError {
        let Some(c) = ErrorCode::parse(code) else {
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                code,
                message,
            );
        };
        let (status, kind, retry_after) = match c {
            ErrorCode::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            ErrorCode::ContextLength => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            ErrorCode::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", None),
            ErrorCode::Busy => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", Some(2)),
            ErrorCode::ShuttingDown | ErrorCode::Interrupted => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some(5))
            }
            ErrorCode::CloudUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", Some(10))
            }
            ErrorCode::CloudError => (StatusCode::BAD_GATEWAY, "server_error", None),
            ErrorCode::Expired | ErrorCode::Timeout | ErrorCode::DeadlineExceeded => {
                (StatusCode::GATEWAY_TIMEOUT, "timeout_error", None)
            }
            // Nobody reads it: the client is gone. 499 is what nginx logs for that.
            ErrorCode::Cancelled => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                "invalid_request_error",
                None,
            ),
            ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        let code = match c {
            ErrorCode::ContextLength => "context_length_exceeded",
            other => other.as_str(),
        };
        ApiError {
            retry_after,
            ..ApiError::new(status, kind, code, message)
        }
    }

    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message,
        )
    }

    /// A request field that is wrong or not supported.
    pub fn invalid_param(param: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            param: Some(param.to_string()),
            ..ApiError::invalid(message)
        }
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "invalid_api_key",
            "a valid API key is required: send it as `Authorization: Bearer KEY`",
        )
    }

    pub fn model_not_found(model: &str, available: &[String]) -> ApiError {
        ApiError {
            param: Some("model".into()),
            ..ApiError::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                "model_not_found",
                format!(
                    "the model {model:?} does not exist here; available: {}",
                    available.join(", ")
                ),
            )
        }
    }

    pub fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "too_large",
            format!("the request body is larger than {limit} bytes (service.max_request_bytes)"),
        )
    }

    pub fn shutting_down() -> ApiError {
        ApiError {
            retry_after: Some(5),
            ..ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutting_down",
                "the device is shutting down; send the request again shortly",
            )
        }
    }

    pub fn timeout(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout_error",
            "timeout",
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal",
            message,
        )
    }

    pub fn not_found(path: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            format!("no such endpoint: {path}"),
        )
    }

    /// The same error in Ollama's shape.
    pub fn ollama(self) -> ApiError {
        ApiError {
            dialect: Dialect::Ollama,
            ..self
        }
    }

    /// The error body in its dialect.
    pub fn body(&self) -> serde_json::Value {
        match self.dialect {
            Dialect::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }}),
            Dialect::Ollama => json!({"error": self.message}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intake_codes_have_openai_statuses() {
        let status = |c: &str| ApiError::from_code(c, String::new()).status.as_u16();
        assert_eq!(status("invalid_request"), 400);
        assert_eq!(status("context_length"), 400);
        assert_eq!(status("too_large"), 413);
        assert_eq!(status("busy"), 429);
        assert_eq!(status("shutting_down"), 503);
        assert_eq!(status("deadline_exceeded"), 504);
        assert_eq!(status("expired"), 504);
        assert_eq!(status("cloud_error"), 502);
        assert_eq!(status("internal"), 500);
        assert_eq!(status("something new"), 500);
        let busy = ApiError::from_code("busy", "full".into());
        assert_eq!(busy.retry_after, Some(2));
        assert_eq!(
            ApiError::from_code("context_length", String::new()).code,
            "context_length_exceeded"
        );
    }

    #[test]
    fn bodies_follow_each_dialect() {
        let e = ApiError::invalid_param("n", "only n = 1 is supported");
        assert_eq!(
            e.body(),
            json!({"error": {"message": "only n = 1 is supported",
                "type": "invalid_request_error", "param": "n", "code": "invalid_request"}})
        );
        assert_eq!(
            e.ollama().body(),
            json!({"error": "only n = 1 is supported"})
        );
        let r = ApiError::from_code("busy", "full".into()).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
    }
}

//! The request body of every POST route, `{"email": string, "password":
//! string}`, and the JSON errors of bad input.

use std::fmt;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

/// A sign-up. The password is only checked for being there: it is never
/// logged, returned, or handed to a task.
pub struct Credentials {
    pub email: String,
    #[allow(dead_code)]
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl<S: Send + Sync> FromRequest<S> for Credentials {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(body) = Json::<Value>::from_request(request, state).await?;
        // Checked by hand rather than by serde, whose messages quote the
        // offending value: a password sent as a number would come back.
        let field = |name: &str| match body.get(name) {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(_) => Err(ApiError::unprocessable(format!(
                "`{name}` must be a string"
            ))),
            None => Err(ApiError::unprocessable(format!("missing field `{name}`"))),
        };
        if !body.is_object() {
            return Err(ApiError::unprocessable(
                r#"expected a JSON object {"email": string, "password": string}"#.to_owned(),
            ));
        }
        Ok(Credentials {
            email: field("email")?,
            password: field("password")?,
        })
    }
}

/// A 4xx with a JSON body `{"error": "..."}` that says what to fix.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn unprocessable(message: String) -> Self {
        Self {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message,
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = match &rejection {
            JsonRejection::MissingJsonContentType(_) => {
                "expected a request with `Content-Type: application/json`".to_owned()
            }
            // serde_json's syntax errors name a position, never a value.
            JsonRejection::JsonSyntaxError(_) => {
                format!("the body is not valid JSON: {}", rejection.body_text())
            }
            _ => rejection.body_text(),
        };
        Self {
            status: rejection.status(),
            message,
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: format!(
                "{}; expected `?mode=error` or `?mode=panic`",
                rejection.body_text()
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

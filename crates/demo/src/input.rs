//! The request body of every POST route, `{"email": string, "password":
//! string}`, and the JSON errors of bad input.
//!
//! No error message quotes a value the client sent: an error is logged and
//! returned, and a value could be a password, or megabytes long.

use std::fmt;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
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
        Self::from_json(&body)
    }
}

impl Credentials {
    /// The credentials in a request's JSON body, checked: the part of the
    /// checks that is the same whichever framework read the body.
    ///
    /// # Errors
    ///
    /// A 422 that says which field is missing or of the wrong type.
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
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
        let email = field("email")?;
        check_email(&email)?;
        Ok(Credentials {
            email,
            password: field("password")?,
        })
    }
}

/// The largest request body the JSON routes read: 64 KiB, far more than a
/// sign-up needs; a larger one is refused with 413 before it is read whole.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest email address there is: 254 bytes (RFC 5321's path of 256,
/// less its angle brackets).
pub const MAX_EMAIL_BYTES: usize = 254;

/// An email goes into `outbox.jsonl`, `log.txt` and the memory of
/// `GET /outbox`: it must be as short as a real address, and hold nothing
/// that could break a line (`\n`, `\r`, NUL, DEL or any other control
/// character).
fn check_email(email: &str) -> Result<(), ApiError> {
    if email.len() > MAX_EMAIL_BYTES {
        return Err(ApiError::unprocessable(format!(
            "`email` must be at most {MAX_EMAIL_BYTES} bytes long"
        )));
    }
    if email.chars().any(char::is_control) {
        return Err(ApiError::unprocessable(
            "`email` must not contain control characters".to_owned(),
        ));
    }
    Ok(())
}

/// A 4xx with a JSON body `{"error": "..."}` that says what to fix.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with this status and message.
    pub fn new(status: StatusCode, message: String) -> Self {
        Self { status, message }
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// What to fix, for the JSON body `{"error": message}`.
    pub fn message(&self) -> &str {
        &self.message
    }

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
            _ if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                format!("the body is larger than {} KiB", MAX_BODY_BYTES / 1024)
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
        let mut response = (self.status, Json(json!({ "error": self.message }))).into_response();
        // A store that is down: the client may try again in a second.
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

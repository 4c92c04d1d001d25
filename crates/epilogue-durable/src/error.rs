//! What can go wrong when storing or reading durable tasks.

use std::sync::Arc;
use std::time::Duration;

use riverqueue::sqlx;

/// An error of the durable store. None of them shows the store's URL.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The task's arguments did not serialise as a JSON object.
    #[error("the durable task could not be encoded (it must serialise as a struct with named fields): {0}")]
    Encode(#[source] serde_json::Error),
    /// The store could not be read or written: nothing was stored.
    #[error("the durable task store is unavailable: {0}")]
    Store(#[source] Arc<riverqueue::Error>),
    /// The store's file was deleted or replaced under the running process:
    /// it refuses every write until restarted, since what it would write
    /// is lost.
    #[error("the durable task store's file {path} was deleted or replaced; restart the process")]
    StoreLost {
        /// The file the store opened.
        path: String,
    },
    /// The store is shutting down and takes no new tasks.
    #[error("the durable task store is shutting down")]
    Closed,
    /// A URL this build cannot open: another scheme, or one whose feature
    /// (`sqlite`, `postgres`) is off.
    #[error("unsupported durable store URL scheme {scheme:?}: use sqlite://PATH or postgres://USER:PASS@HOST:PORT/DB (with the matching feature)")]
    UnsupportedUrl {
        /// The scheme, at most 32 characters of it.
        scheme: String,
    },
    /// River's tables could not be created or upgraded.
    #[error("the durable task store's tables could not be migrated: {0}")]
    Migrate(#[source] crate::task::BoxError),
    /// A setting that River refused, such as a task kind registered twice.
    #[error("invalid durable store configuration: {0}")]
    Config(#[source] riverqueue::Error),
    /// A task of a kind no [`register`](crate::StoreBuilder::register)
    /// call named was asked for by its type.
    #[error("the stored task {id} is a {found:?}, not a {expected:?}")]
    WrongKind {
        /// The task.
        id: crate::TaskId,
        /// The kind asked for.
        expected: &'static str,
        /// The kind stored.
        found: String,
    },
    /// The request has no durable handle: the executing layer was not given
    /// the store (`.commit(store)`).
    #[error("no durable task store on this request: give the store to the executing layer with `.commit(store)`")]
    NoStore,
    /// A task was added after its response was produced.
    #[error("durable task added after the response was produced; it is not stored")]
    Answered,
}

impl DurableError {
    /// Whether trying again later may succeed (the store is down or busy),
    /// as opposed to a mistake in the code: what a `503` is for.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Store(_) | Self::StoreLost { .. } | Self::Closed)
    }

    /// When to try again, for a `Retry-After` header.
    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(1)
    }
}

/// How a [`DurableError`] is answered over HTTP, whatever the framework.
#[cfg(any(feature = "axum", feature = "actix"))]
pub(crate) struct Answer {
    pub(crate) status: http::StatusCode,
    /// `{"error": .., "reason": ..}`.
    pub(crate) body: String,
    /// In seconds, for a `503`.
    pub(crate) retry_after: Option<u64>,
}

#[cfg(any(feature = "axum", feature = "actix"))]
impl DurableError {
    /// The status of [`answer`](Self::answer), and the body's `reason`,
    /// without logging.
    pub(crate) fn status_and_reason(&self) -> (http::StatusCode, &'static str) {
        if self.is_unavailable() {
            (http::StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
        } else if matches!(self, Self::Encode(_)) {
            (http::StatusCode::BAD_REQUEST, "task_not_encodable")
        } else {
            (
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "durable_misconfigured",
            )
        }
    }

    /// `503` with `Retry-After` when the store is unavailable (nothing was
    /// stored: try again), `400` for a task that does not encode, `500` for
    /// a mistake in the service's code. The body never shows the store's
    /// own error, which is logged here.
    pub(crate) fn answer(&self) -> Answer {
        let (status, reason) = self.status_and_reason();
        let message = if self.is_unavailable() {
            tracing::error!(error = %self, "durable task not stored; answering 503");
            "the durable task store is unavailable; nothing was stored, try again".to_owned()
        } else {
            tracing::error!(error = %self, "durable task not stored");
            self.to_string()
        };
        Answer {
            status,
            body: serde_json::json!({ "error": message, "reason": reason }).to_string(),
            retry_after: self
                .is_unavailable()
                .then(|| self.retry_after().as_secs().max(1)),
        }
    }
}

impl DurableError {
    /// The same error for another caller of a batch that failed: a store
    /// error shares its source, a lost file its path.
    pub(crate) fn share(&self) -> Self {
        match self {
            Self::Store(error) => Self::Store(error.clone()),
            Self::StoreLost { path } => Self::StoreLost { path: path.clone() },
            other => Self::Store(Arc::new(riverqueue::Error::Database(
                sqlx::Error::Protocol(other.to_string()),
            ))),
        }
    }
}

impl From<sqlx::Error> for DurableError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(Arc::new(riverqueue::Error::Database(error)))
    }
}

impl From<riverqueue::Error> for DurableError {
    fn from(error: riverqueue::Error) -> Self {
        Self::Store(Arc::new(error))
    }
}

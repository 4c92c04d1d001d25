//! What can go wrong with durable tasks.

/// Why a durable task could not be stored, or the store not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The store could not be reached, read or written. Nothing was stored
    /// by the call that failed; try again.
    #[error("the durable task store failed: {0}")]
    Store(#[from] sqlx::Error),
    /// The store's schema could not be created or brought up to date.
    #[error("the durable task store could not be set up: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The engine refused an operation (a worker it does not know, say).
    #[error("the durable task engine failed: {0}")]
    Engine(String),
    /// The store URL names no store this build supports. Only its scheme
    /// is kept: the rest may hold a password.
    #[error(
        "unsupported store URL scheme {scheme:?}: expected sqlite://PATH (feature `sqlite`) \
         or postgres://USER:PASS@HOST:PORT/DB (feature `postgres`)"
    )]
    UnsupportedUrl {
        /// The URL's scheme, before its first `:`.
        scheme: String,
    },
    /// A task's arguments could not be serialised.
    #[error("durable task {task} could not be serialised: {error}")]
    Encode {
        /// The task's [`NAME`](super::DurableTask::NAME).
        task: &'static str,
        /// What serde said.
        error: serde_json::Error,
    },
    /// The request has no durable store: the executing layer was built
    /// without [`BackgroundLayer::durable`](crate::http::BackgroundLayer::durable).
    #[error(
        "no durable store for this request: give one to the executing layer with \
         BackgroundLayer::durable (or Serve::durable)"
    )]
    NoStore,
    /// The request's response has already been produced: a durable task
    /// added now would never be stored.
    #[error("the response was already produced; a durable task added now is not stored")]
    Closed,
}

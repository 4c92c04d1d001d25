//! Why a request's tasks could not be taken: the error every HTTP part
//! of the crate shares.

use crate::runner::Refused;

/// Why a request's scope could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    /// The runner is full or shutting down: answer `503` with `Retry-After`.
    #[error("{refused}")]
    Refused {
        /// Why.
        refused: Refused,
        /// When to try again.
        retry_after: std::time::Duration,
    },
    /// No [`BackgroundLayer`](super::BackgroundLayer) around the service.
    #[error("{MISSING_LAYER}")]
    MissingLayer,
}

/// What to do when the executing layer is missing.
pub(crate) const MISSING_LAYER: &str = "epilogue's BackgroundLayer is missing: wrap the \
    application in it (epilogue::axum::serve does; with actix-web, \
    App::wrap(epilogue::actix::Background::new(runner))), outside every route-level background \
    layer and RequestTasks or Admitted extractor";

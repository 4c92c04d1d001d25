//! Work a request must commit before its response leaves: the hook through
//! which a durable task store (the `epilogue-durable` crate) joins the
//! executing layer, without the layer knowing what it stores.
//!
//! The executing layer calls [`Commit::begin`] as a request enters, and
//! awaits [`PendingCommit::commit`] once the handler has answered, before
//! the response leaves. If that fails, the client gets `503` with
//! `Retry-After` and a JSON error in place of the handler's response, and
//! none of the request's in-memory tasks run: a success is never sent for
//! work that was not committed.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use http::{Extensions, HeaderMap, StatusCode};

/// The error a commit fails with: logged by the executing layer, never
/// shown to the client (it may name a file or a server).
pub type CommitError = Box<dyn std::error::Error + Send + Sync>;

/// A commit under way, awaited before the response leaves.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), CommitError>> + Send>>;

/// What a request must commit before its response leaves; given to
/// [`BackgroundLayer::commit`](super::BackgroundLayer::commit).
pub trait Commit: Send + Sync + 'static {
    /// Called as each request enters the executing layer: puts what the
    /// handler needs into the request's `extensions` (say, a handle to
    /// which it adds durable tasks), and returns the request's side of it.
    /// The request's `headers` are there to read what travels with the work
    /// (a W3C `traceparent`). `None`: this request commits nothing.
    fn begin(
        &self,
        headers: &HeaderMap,
        extensions: &mut Extensions,
    ) -> Option<Arc<dyn PendingCommit>>;
}

/// One request's side of a [`Commit`].
pub trait PendingCommit: Send + Sync {
    /// Called once the handler has answered with `status`, with the
    /// response's `extensions` (where a handler may have attached work):
    /// the commit to await before the response leaves, or `None` if there
    /// is nothing to commit.
    fn commit(&self, status: StatusCode, extensions: &mut Extensions) -> Option<CommitFuture>;

    /// Called instead of [`commit`](Self::commit) when no response will
    /// come (the handler's future was dropped, or the service failed):
    /// nothing of this request may be committed.
    fn abandon(&self);
}

/// A [`Commit`] the layer can clone and show.
#[derive(Clone)]
pub(crate) struct CommitHook(pub(crate) Arc<dyn Commit>);

impl fmt::Debug for CommitHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Commit")
    }
}

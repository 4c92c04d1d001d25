//! The response body that starts its tasks once it has been handed on.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use pin_project_lite::pin_project;

use crate::runner::Deferred;

pin_project! {
    /// A response body whose tasks start once it has been handed to the
    /// server in full, or dropped: [`Background`](super::Background)'s
    /// body, as actix-web's own `Logger` wraps a body to log when it ends.
    pub struct TasksBody<B> {
        #[pin]
        body: B,
        // Bytes still to come of a body of known size: its last chunk is
        // the end, whether or not the server polls once more.
        remaining: Option<u64>,
        // Starts when dropped: the body needs no drop logic of its own.
        tasks: Option<Deferred>,
    }
}

impl<B: MessageBody> TasksBody<B> {
    pub(super) fn new(body: B, tasks: Option<Deferred>) -> Self {
        let remaining = match body.size() {
            BodySize::Sized(n) => Some(n),
            BodySize::None | BodySize::Stream => None,
        };
        Self {
            body,
            remaining,
            tasks,
        }
    }

    /// Whether its tasks are still waiting for the body to be sent.
    pub fn has_pending_tasks(&self) -> bool {
        self.tasks.is_some()
    }
}

impl<B: MessageBody> MessageBody for TasksBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.project();
        let chunk = ready!(this.body.poll_next(cx));
        let done = match (&chunk, this.remaining.as_mut()) {
            (Some(Ok(bytes)), Some(remaining)) => {
                *remaining = remaining.saturating_sub(bytes.len() as u64);
                *remaining == 0
            }
            (Some(Ok(_)), None) => false,
            (None | Some(Err(_)), _) => true,
        };
        if done {
            if let Some(tasks) = this.tasks.take() {
                tasks.start();
            }
        }
        Poll::Ready(chunk)
    }
}

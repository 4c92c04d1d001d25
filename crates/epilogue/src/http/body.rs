//! The response body that starts its tasks once it has been handed on.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::runner::Deferred;

pin_project! {
    /// A response body that starts its response's background tasks once it
    /// is complete or dropped, whichever comes first.
    ///
    /// hyper does not always poll a body to its end: a body whose
    /// `is_end_stream()` is true after its last frame (one with a known
    /// length) is dropped without the final `poll_frame`, and an empty body
    /// may never be polled at all. So the tasks start when a frame leaves the
    /// inner body at its end, when the inner body ends or fails, or when this
    /// body is dropped: a client that goes away mid-body drops it, and its
    /// accepted tasks still run.
    ///
    /// `size_hint` and `is_end_stream` are forwarded, so wrapping a body never
    /// turns a `Content-Length` response into a chunked one.
    pub struct BackgroundBody<B> {
        #[pin]
        inner: B,
        // Starts when dropped: the body needs no drop logic of its own.
        tasks: Option<Deferred>,
    }
}

impl<B> BackgroundBody<B> {
    pub(crate) fn new(inner: B, tasks: Option<Deferred>) -> Self {
        Self { inner, tasks }
    }

    /// Whether this body still holds tasks that have not started.
    pub fn has_pending_tasks(&self) -> bool {
        self.tasks.is_some()
    }
}

impl<B: Default> Default for BackgroundBody<B> {
    /// An empty body without tasks, for middleware that answers in place of
    /// the service (a timeout, say).
    fn default() -> Self {
        Self::new(B::default(), None)
    }
}

impl<B: Body> Body for BackgroundBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        // The body has been handed on in full when it ends, fails, or its
        // last frame is out: hyper may never poll again after that frame.
        let done = match &frame {
            Some(Ok(_)) => this.inner.is_end_stream(),
            None | Some(Err(_)) => true,
        };
        if done {
            if let Some(tasks) = this.tasks.take() {
                tasks.start();
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};

    use super::*;
    use crate::{BackgroundTask, Runner};

    fn with_task<B>(runner: &Runner, inner: B) -> BackgroundBody<B> {
        let tasks = runner
            .admit()
            .unwrap()
            .defer(BackgroundTask::new(|| {}, ()));
        BackgroundBody::new(inner, Some(tasks))
    }

    #[tokio::test]
    async fn starts_once_the_last_frame_of_a_sized_body_is_out() {
        let runner = Runner::new();
        let mut body = with_task(&runner, Full::new(Bytes::from_static(b"done")));
        assert_eq!(body.size_hint().exact(), Some(4));
        let frame = body.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "done");
        // hyper would drop the body here without another poll.
        assert!(!body.has_pending_tasks());
        assert!(body.is_end_stream());
        runner.shutdown(Duration::from_secs(5)).await;
        assert_eq!(runner.stats().succeeded, 1);
    }

    #[tokio::test]
    async fn waits_for_the_end_of_a_stream() {
        let runner = Runner::new();
        let chunks = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(Frame::data(
            Bytes::from_static(b"chunk"),
        ))]);
        let mut body = with_task(&runner, StreamBody::new(chunks));
        body.frame().await.unwrap().unwrap();
        assert!(
            body.has_pending_tasks(),
            "a stream's end is only known at its None"
        );
        assert!(body.frame().await.is_none());
        assert!(!body.has_pending_tasks());
    }

    #[tokio::test]
    async fn starts_when_dropped_unpolled() {
        let runner = Runner::new();
        let body = with_task(&runner, Empty::<Bytes>::new());
        assert!(body.is_end_stream());
        drop(body);
        runner.shutdown(Duration::from_secs(5)).await;
        assert_eq!(runner.stats().succeeded, 1);
    }
}

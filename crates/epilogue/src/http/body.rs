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
    ///
    /// It may also be epilogue's own short JSON answer in place of the
    /// service's (`503` when durable tasks could not be stored or an
    /// unadmitted response was refused, `408` when `serve`'s body read
    /// timeout fired): hence
    /// `B::Data: From<&'static str>`, which `Bytes` is.
    pub struct BackgroundBody<B> {
        #[pin]
        kind: Kind<B>,
        // Starts when dropped: the body needs no drop logic of its own.
        tasks: Option<Deferred>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Inner { #[pin] body: B },
        Own { text: Option<&'static str> },
    }
}

impl<B> BackgroundBody<B> {
    pub(crate) fn new(inner: B, tasks: Option<Deferred>) -> Self {
        Self {
            kind: Kind::Inner { body: inner },
            tasks,
        }
    }

    /// epilogue's own answer, in place of the service's body.
    pub(crate) fn own(text: &'static str) -> Self {
        Self {
            kind: Kind::Own { text: Some(text) },
            tasks: None,
        }
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

impl<B> Body for BackgroundBody<B>
where
    B: Body,
    B::Data: From<&'static str>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut body = match this.kind.project() {
            KindProj::Inner { body } => body,
            KindProj::Own { text } => {
                return Poll::Ready(text.take().map(|text| Ok(Frame::data(text.into()))));
            }
        };
        let frame = ready!(body.as_mut().poll_frame(cx));
        // The body has been handed on in full when it ends, fails, or its
        // last frame is out: hyper may never poll again after that frame.
        let done = match &frame {
            Some(Ok(_)) => body.is_end_stream(),
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
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Own { text } => text.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Own { text } => SizeHint::with_exact(text.map_or(0, |text| text.len() as u64)),
        }
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

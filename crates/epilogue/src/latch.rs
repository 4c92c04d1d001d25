//! A one-way flag that tasks can wait on: the shutdown deadline, and the
//! signal that tells connections to close.
//!
//! A flag and a `Notify` rather than a `CancellationToken`, whose every check
//! and every poll takes a lock: every task checks the deadline, every
//! pending task waits on it, and every connection waits on the close signal
//! each time it is polled.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use pin_project_lite::pin_project;
use tokio::sync::futures::Notified;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    /// Sets the flag and wakes every waiter; setting it again does nothing.
    pub(crate) fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Completes once the flag is set.
    pub(crate) fn wait(&self) -> Wait<'_> {
        Wait {
            latch: self,
            // Taken before the flag is first checked: `notify_waiters` wakes
            // a `Notified` from its creation on, even before its first poll.
            notified: self.notify.notified(),
            registered: None,
        }
    }
}

pin_project! {
    /// The future of [`Latch::wait`].
    pub(crate) struct Wait<'a> {
        latch: &'a Latch,
        #[pin]
        notified: Notified<'a>,
        // The waker `notified` holds: polled again by the same task, the
        // future need not touch `Notify`'s lock.
        registered: Option<Waker>,
    }
}

impl Future for Wait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.latch.is_set() {
            return Poll::Ready(());
        }
        if let Some(waker) = this.registered {
            if waker.will_wake(cx.waker()) {
                return Poll::Pending;
            }
        }
        if this.notified.poll(cx).is_ready() {
            return Poll::Ready(());
        }
        *this.registered = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_set_whenever_they_started_waiting() {
        let latch = Arc::new(Latch::default());
        let early = tokio::spawn({
            let latch = latch.clone();
            async move { latch.wait().await }
        });
        // A wait taken before `set` but first polled after it completes too.
        let late = latch.wait();
        tokio::task::yield_now().await;
        assert!(!latch.is_set());
        latch.set();
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("the early waiter woke")
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), late)
            .await
            .expect("the late waiter completed");
        // And one taken after it completes at once.
        assert!(futures_util::poll!(std::pin::pin!(latch.wait())).is_ready());
    }
}

//! A place in the runner, from admission to the group's start: a [`Permit`]
//! is room taken before the work is known, a [`Deferred`] is the accepted
//! group that will use it.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use tracing::Span;

use super::state::{Accepted, Admission, State};
use crate::tasks::BackgroundTasks;

/// Why a runner refused new work.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Every permit is taken: `max_running` groups run and `max_pending` wait.
    #[error("background work is at capacity ({limit} groups running or waiting); retry later")]
    Full {
        /// `max_running + max_pending`.
        limit: usize,
    },
    /// [`Runner::shutdown`](super::Runner::shutdown) or
    /// [`Runner::close`](super::Runner::close) was called.
    #[error("the service is shutting down and takes no new background work")]
    ShuttingDown,
}

/// Room in the [`Runner`](super::Runner) for one group of tasks, taken before
/// the tasks are known, from [`Runner::admit`](super::Runner::admit).
/// Dropping it gives the room back.
#[must_use = "a permit holds room in the runner until it is used or dropped"]
pub(crate) struct Permit {
    // A shutdown waits for admitted work too: the request holding this
    // permit may still produce tasks.
    admission: Admission,
}

impl Permit {
    pub(super) fn acquire(state: &Arc<State>) -> Result<Self, Refused> {
        let admitted = if state.is_closed() {
            Err(Refused::ShuttingDown)
        } else {
            Admission::try_new(state).ok_or(Refused::Full {
                limit: state.limit(),
            })
        };
        match admitted {
            Ok(admission) => Ok(Self { admission }),
            Err(refused) => {
                state.counters().refused();
                Err(refused)
            }
        }
    }

    /// Accepts `tasks` in this room, to be started by [`Deferred::start`] or
    /// when the [`Deferred`] is dropped, whichever comes first. The tasks
    /// count as accepted (and pending) from now on, and run in the current
    /// span.
    pub(crate) fn defer(self, tasks: impl Into<BackgroundTasks>) -> Deferred {
        self.defer_in(tasks.into(), &Span::current())
    }

    /// [`defer`](Permit::defer), running in `parent`.
    pub(crate) fn defer_in(self, mut tasks: BackgroundTasks, parent: &Span) -> Deferred {
        let state = self.admission.state();
        let tasks = tasks.take();
        state.counters().accepted(tasks.len() as u64);
        // The group runs inside the request's span, so that its log lines
        // say which request it came from; at DEBUG, in a span of its own
        // below it. Asked first: `debug_span!` alone, with `tracing`'s `log`
        // feature on (axum turns it on) and no subscriber set, would hand
        // every disabled span to `log`.
        let span = if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug_span!(parent: parent, "epilogue.group", tasks = tasks.len())
        } else {
            parent.clone()
        };
        Deferred {
            group: Some(Accepted {
                accepted_at: Instant::now(),
                admission: self.admission,
                tasks,
                span,
            }),
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit").finish_non_exhaustive()
    }
}

/// An accepted group that has not started yet: the tasks of a response whose
/// body is still being sent. It starts on [`start`](Deferred::start), or when
/// dropped, so an accepted group is never forgotten; shutdown waits for it.
#[must_use = "a Deferred group starts when dropped; call start() to make that explicit"]
pub(crate) struct Deferred {
    group: Option<Accepted>,
}

impl Deferred {
    /// Starts the group, or queues it behind the groups waiting for a
    /// running place. Outside a tokio runtime (one
    /// that is shutting down, say) the group is counted as cut off instead,
    /// and an error is logged.
    pub(crate) fn start(mut self) {
        self.start_now();
    }

    /// Takes a running place for the group if one is free, and gives it
    /// back for the caller to run on its own task; else queues it behind
    /// the groups waiting, to start on a lane.
    pub(super) fn start_here(mut self) -> Option<Accepted> {
        let group = self.group.take()?;
        let state = group.admission.state().clone();
        state.start_here(group)
    }

    fn start_now(&mut self) {
        if let Some(group) = self.group.take() {
            let state = group.admission.state().clone();
            state.start(group);
        }
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.start_now();
    }
}

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("tasks", &self.group.as_ref().map(|g| g.tasks.task_names()))
            .finish()
    }
}

/// Keeps a runner's shutdown waiting until dropped; from
/// [`Runner::hold`](super::Runner::hold).
#[must_use = "a hold keeps the runner's shutdown waiting until it is dropped"]
pub struct Hold {
    state: Arc<State>,
}

impl Hold {
    pub(super) fn new(state: &Arc<State>) -> Self {
        state.hold();
        Self {
            state: state.clone(),
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.state.release_hold();
    }
}

impl fmt::Debug for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hold").finish_non_exhaustive()
    }
}

//! What a user writes: a durable task, and what one run of it sees.

use std::fmt;
use std::future::Future;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The error a durable task's run returns: anything that can be shown.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A task stored before the response is sent, and run at least once.
///
/// Its fields are its arguments, stored as JSON (River's `args`): keep them
/// small (an id, not a file; write the file to disk first). Its
/// [`NAME`](Self::NAME) is River's job *kind*: keep it stable across
/// deployments, since stored tasks outlive the code that wrote them. A
/// process that does not register a kind never fetches its tasks, so
/// during a rolling deploy they wait for one that does.
///
/// ```
/// use epilogue_durable::{BoxError, DurableTask, Job};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// struct SendWelcome {
///     email: String,
/// }
///
/// impl DurableTask for SendWelcome {
///     const NAME: &'static str = "send_welcome";
///     type State = ();
///     type Output = ();
///
///     async fn run(self, job: Job, (): ()) -> Result<(), BoxError> {
///         // `job.id()` is the same on every attempt: an idempotency key
///         // for the mail server.
///         println!("welcome, {} (task {}, attempt {})", self.email, job.id(), job.attempt());
///         Ok(())
///     }
/// }
/// ```
pub trait DurableTask: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The task's kind in the store: 1 to 127 bytes, stable.
    const NAME: &'static str;

    /// Attempts before the task is discarded ("dead"), the first included.
    const MAX_ATTEMPTS: u32 = 5;

    /// How long one attempt may run before it is stopped (its future is
    /// dropped) and counted as failed; `None` for the store's default
    /// ([`StoreBuilder::timeout`](crate::StoreBuilder::timeout)).
    const TIMEOUT: Option<Duration> = None;

    /// What the run needs besides its arguments (a pool, a mailer), given
    /// once to [`StoreBuilder::register`](crate::StoreBuilder::register)
    /// and cloned for each run.
    type State: Clone + Send + Sync + 'static;

    /// What a run produces, kept with the task in the store
    /// ([`Store::task`](crate::Store::task)); `()` for nothing.
    type Output: Serialize + DeserializeOwned + Send + 'static;

    /// Runs the task once. An `Err`, a panic or a timeout is a failed
    /// attempt: recorded, then retried after a backoff (1, 2, 4, 8… s)
    /// until [`MAX_ATTEMPTS`](Self::MAX_ATTEMPTS).
    fn run(
        self,
        job: Job,
        state: Self::State,
    ) -> impl Future<Output = Result<Self::Output, BoxError>> + Send;
}

/// A stored task's id: River's job id, the same on every attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub(crate) i64);

impl TaskId {
    /// River's job id.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl From<i64> for TaskId {
    fn from(id: i64) -> Self {
        Self(id)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(Self)
    }
}

impl Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A string: JavaScript clients lose precision past 2^53.
        serializer.collect_str(&self.0)
    }
}

/// One run of a stored task, as its [`DurableTask::run`] sees it.
#[derive(Clone, Debug)]
pub struct Job {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
}

impl Job {
    /// The task's id, the same on every attempt: use it as an idempotency
    /// key with whatever the task talks to.
    pub fn id(&self) -> TaskId {
        self.id
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether this is the last attempt before the task is discarded.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

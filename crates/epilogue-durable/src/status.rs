//! What can be read back from the store: a task's state, the counts, the
//! dead tasks. Plain values, built from River's rows.

use std::time::SystemTime;

use riverqueue::{JobRow, JobState};
use serde::Serialize;

use crate::task::TaskId;

/// Where a stored task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TaskState {
    /// Waiting for a worker.
    Queued,
    /// Waiting for its time (a delayed task).
    Scheduled,
    /// A worker runs it now.
    Running,
    /// An attempt failed; waiting for the next one.
    Retrying,
    /// Ran to the end.
    Succeeded,
    /// Every attempt failed (or a run said to give up): kept for a look and
    /// a [`retry`](crate::Store::retry), not run again by itself.
    Dead,
    /// Cancelled before it could succeed.
    Cancelled,
}

impl TaskState {
    /// The state of River's `state`.
    pub(crate) fn of(state: JobState) -> Self {
        match state {
            JobState::Available | JobState::Pending => Self::Queued,
            JobState::Scheduled => Self::Scheduled,
            JobState::Running => Self::Running,
            JobState::Retryable => Self::Retrying,
            JobState::Completed => Self::Succeeded,
            JobState::Discarded => Self::Dead,
            JobState::Cancelled => Self::Cancelled,
            // A state of a newer River: waiting, as far as we can tell.
            _ => Self::Queued,
        }
    }

    /// The name used in JSON and metrics: `queued`, `running`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Scheduled => "scheduled",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every state, in the order of a task's life.
    pub const ALL: [Self; 7] = [
        Self::Queued,
        Self::Scheduled,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
    ];
}

/// One stored task, from [`Store::task`](crate::Store::task): `O` is its
/// output (`T::Output`, or `serde_json::Value` when its type is not known).
#[derive(Clone, Debug, Serialize)]
#[non_exhaustive]
pub struct TaskInfo<O> {
    /// Its id.
    pub id: TaskId,
    /// Its kind ([`DurableTask::NAME`](crate::DurableTask::NAME)).
    pub task: String,
    /// Where it is.
    pub state: TaskState,
    /// Attempts started so far.
    pub attempts: u32,
    /// Attempts it may have.
    pub max_attempts: u32,
    /// When it was stored.
    #[serde(serialize_with = "rfc3339")]
    pub created_at: SystemTime,
    /// When it runs, or ran, or runs again.
    #[serde(serialize_with = "rfc3339")]
    pub scheduled_at: SystemTime,
    /// When it ended (succeeded, dead or cancelled).
    #[serde(serialize_with = "rfc3339_option")]
    pub finalized_at: Option<SystemTime>,
    /// Its output, once it succeeded with one.
    pub output: Option<O>,
    /// The error of its last failed attempt.
    pub last_error: Option<String>,
    /// The W3C trace context of the request that stored it, if it came with
    /// one: its runs' spans carry it too.
    pub traceparent: Option<String>,
}

impl TaskInfo<serde_json::Value> {
    /// The task of River's row, with its output as JSON.
    pub(crate) fn of(row: &JobRow) -> Self {
        let output = row.decode_output::<serde_json::Value>().ok().flatten();
        Self::with_output(row, output)
    }
}

impl<O> TaskInfo<O> {
    pub(crate) fn with_output(row: &JobRow, output: Option<O>) -> Self {
        Self {
            id: TaskId(row.id),
            task: row.kind.clone(),
            state: TaskState::of(row.state),
            attempts: u32::try_from(row.attempt).unwrap_or(0),
            max_attempts: u32::try_from(row.max_attempts).unwrap_or(0),
            created_at: row.created_at.into(),
            scheduled_at: row.scheduled_at.into(),
            finalized_at: row.finalized_at.map(Into::into),
            output,
            last_error: row.errors.last().map(|error| error.error.clone()),
            traceparent: row
                .metadata
                .get::<String>(crate::trace::METADATA_KEY)
                .ok()
                .flatten(),
        }
    }
}

/// How many stored tasks are in each state, from
/// [`Store::stats`](crate::Store::stats). Finished ones count until the
/// retention removes them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct DurableStats {
    /// Waiting for a worker.
    pub queued: u64,
    /// Waiting for their time.
    pub scheduled: u64,
    /// Running now.
    pub running: u64,
    /// Waiting for another attempt.
    pub retrying: u64,
    /// Ran to the end (within the retention).
    pub succeeded: u64,
    /// Every attempt failed.
    pub dead: u64,
    /// Cancelled.
    pub cancelled: u64,
}

impl DurableStats {
    /// The count of `state`.
    pub fn get(&self, state: TaskState) -> u64 {
        match state {
            TaskState::Queued => self.queued,
            TaskState::Scheduled => self.scheduled,
            TaskState::Running => self.running,
            TaskState::Retrying => self.retrying,
            TaskState::Succeeded => self.succeeded,
            TaskState::Dead => self.dead,
            TaskState::Cancelled => self.cancelled,
        }
    }

    pub(crate) fn add(&mut self, state: TaskState, count: u64) {
        let slot = match state {
            TaskState::Queued => &mut self.queued,
            TaskState::Scheduled => &mut self.scheduled,
            TaskState::Running => &mut self.running,
            TaskState::Retrying => &mut self.retrying,
            TaskState::Succeeded => &mut self.succeeded,
            TaskState::Dead => &mut self.dead,
            TaskState::Cancelled => &mut self.cancelled,
        };
        *slot += count;
    }
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    match riverqueue::jiff::Timestamp::try_from(*at) {
        Ok(at) => serializer.collect_str(&at),
        Err(_) => serializer.serialize_none(),
    }
}

fn rfc3339_option<S: serde::Serializer>(
    at: &Option<SystemTime>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => rfc3339(at, serializer),
        None => serializer.serialize_none(),
    }
}

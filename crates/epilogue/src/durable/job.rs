//! What a durable task's handler knows of its run.

use std::fmt;

/// A durable task's id: a ULID, unique across processes, the same on every
/// attempt. Use it as an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// A fresh id.
    pub(crate) fn generate() -> Self {
        Self(ulid::Ulid::new().to_string())
    }

    pub(crate) fn from_stored(id: String) -> Self {
        Self(id)
    }

    /// The id as text, as it is stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for TaskId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// One run of a durable task, as its handler sees it.
#[derive(Clone, Debug)]
pub struct Job {
    pub(crate) id: TaskId,
    pub(crate) attempt: u32,
    pub(crate) max_attempts: u32,
}

impl Job {
    /// The task's id: the same on every attempt, on every worker.
    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// Which attempt this is: 1 for the first. An attempt cut short by a
    /// worker's death counts.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether a failure now makes the task dead rather than retried.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_attempts
    }
}

//! How a task is stored: its own fields as River's `args`, plus the
//! idempotency key when it has one.

use riverqueue::{InsertOpts, JobArgs};
use serde::{Deserialize, Serialize};

use crate::task::DurableTask;

/// The name of the idempotency key among a stored task's arguments.
pub(crate) const KEY_FIELD: &str = "idempotency_key";

/// A task as River stores it. Its fields are flattened into `args`, so a
/// River client in another language sees the task's own fields (and a
/// task must be a struct with named fields).
#[derive(Serialize, Deserialize)]
pub(crate) struct Envelope<T> {
    #[serde(flatten)]
    pub(crate) task: T,
    /// River's unique jobs look at the arguments only: the key is one, so
    /// that two tasks with the same key are one task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) idempotency_key: Option<String>,
}

impl<T: DurableTask> JobArgs for Envelope<T> {
    const KIND: &'static str = T::NAME;

    fn default_insert_opts() -> InsertOpts {
        InsertOpts::default().with_max_attempts(i32::try_from(T::MAX_ATTEMPTS).unwrap_or(i32::MAX))
    }

    fn unique_fields() -> &'static [&'static [&'static str]] {
        &[&[KEY_FIELD]]
    }
}

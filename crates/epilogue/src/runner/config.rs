//! What a runner is built with: its limits and settings, plain values that
//! every other part of the runner reads.

use std::time::Duration;

/// What a [`Builder`](super::Builder) sets.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) max_running: usize,
    pub(super) max_pending: usize,
    pub(super) max_blocking: usize,
    pub(super) task_timeout: Option<Duration>,
    pub(super) retry_after: Duration,
    /// `None`: one per worker thread of the runtime.
    pub(super) lanes: Option<usize>,
    /// `None`: the runtime the group starts on.
    pub(super) runtime: Option<tokio::runtime::Handle>,
}

/// A runner's limits, from [`Runner::limits`](super::Runner::limits); set
/// with [`Builder`](super::Builder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Limits {
    /// Groups running at once.
    pub max_running: usize,
    /// Admitted groups waiting for a running permit, past `max_running`.
    pub max_pending: usize,
    /// Plain-`fn` tasks on the blocking pool at once.
    pub max_blocking: usize,
}

impl Config {
    pub(super) fn limits(&self) -> Limits {
        Limits {
            max_running: self.max_running,
            max_pending: self.max_pending,
            max_blocking: self.max_blocking,
        }
    }
}

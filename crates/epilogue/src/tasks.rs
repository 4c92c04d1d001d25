//! An ordered group of background tasks.

use std::fmt;

use crate::task::{BackgroundTask, TaskFn};

/// An ordered group of [`BackgroundTask`]s, the Rust form of Esmerald's
/// `BackgroundTasks(tasks=[...])` and its `add_task`.
///
/// By default the tasks of a group run **one after another, in the order they
/// were added**. A task that fails or panics is reported and the next one
/// still runs, unless the group was made with
/// [`stop_on_error`](BackgroundTasks::stop_on_error). A group made with
/// [`concurrent`](BackgroundTasks::concurrent) runs its tasks all at once
/// instead (Lilya's `Tasks(as_group=True)`), each failure still isolated and
/// counted.
///
/// Groups merge with [`merge`](BackgroundTasks::merge): a merged group keeps
/// its own mode, so appending a concurrent group to a sequential one runs the
/// concurrent set as one step of the sequence, and a `stop_on_error` group
/// merged into another stops only its own tasks.
///
/// # Example
///
/// ```
/// use epilogue::{BackgroundTask, BackgroundTasks};
///
/// async fn send_email(to: String, message: &'static str) { /* ... */ }
/// fn write_in_file(line: String) { /* ... */ }
///
/// // From a list, like `BackgroundTasks(tasks=[...])`.
/// let list = BackgroundTasks::from([
///     BackgroundTask::new(send_email, ("ada@example.com".to_owned(), "Welcome")),
///     BackgroundTask::new(write_in_file, ("signed up".to_owned(),)),
/// ]);
///
/// // Grown with `add_task`, like `tasks.add_task(func, *args)`.
/// let mut tasks = BackgroundTasks::new();
/// tasks.add_task(send_email, ("ada@example.com".to_owned(), "Welcome"));
/// tasks.add_task(write_in_file, ("signed up".to_owned(),));
///
/// assert_eq!(list.len(), tasks.len());
/// ```
///
/// # A value, nothing more
///
/// A group is plain data: it runs when it is handed to something that runs
/// it (returned from a handler as a response part, given to a route layer or
/// to [`Runner::spawn`](crate::Runner::spawn)), and never by itself. A group
/// that still holds tasks when it is dropped logs a warning, since that is
/// almost always a group built and then forgotten; call
/// [`clear`](BackgroundTasks::clear) first to drop tasks on purpose.
#[must_use = "a BackgroundTasks group does nothing until it is handed to a response or a Runner"]
#[derive(Default)]
pub struct BackgroundTasks {
    pub(crate) steps: Vec<Step>,
    pub(crate) mode: Mode,
}

/// How the steps of a group run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Mode {
    /// One after another; a failure does not stop the rest.
    #[default]
    Sequential,
    /// One after another; the first failure skips the rest of this group.
    StopOnError,
    /// All at once.
    Concurrent,
}

/// One step of a group: a task, or a nested group that kept its own mode.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    Task(BackgroundTask),
    Group(BackgroundTasks),
}

impl BackgroundTasks {
    /// An empty group whose tasks will run one after another.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty group whose tasks will run concurrently, like Lilya's
    /// `Tasks(as_group=True)`. A failing or panicking task does not stop the
    /// others; each outcome is counted on its own.
    pub fn concurrent() -> Self {
        Self::with_mode(Mode::Concurrent)
    }

    /// An empty group whose tasks run one after another and whose first
    /// failure (an `Err` or a panic) skips the tasks after it. Skipped tasks
    /// are counted as `skipped` in [`Stats`](crate::Stats).
    pub fn stop_on_error() -> Self {
        Self::with_mode(Mode::StopOnError)
    }

    fn with_mode(mode: Mode) -> Self {
        Self {
            steps: Vec::new(),
            mode,
        }
    }

    /// A plain sequential group of these steps.
    pub(crate) fn from_steps(steps: Vec<Step>) -> Self {
        Self {
            steps,
            mode: Mode::Sequential,
        }
    }

    /// Adds `function(args...)` at the end of the group: Esmerald's
    /// `add_task(func, *args)`. Takes an `async fn` or a plain `fn`, like
    /// [`BackgroundTask::new`].
    pub fn add_task<F, Args, Kind>(&mut self, function: F, args: Args) -> &mut Self
    where
        F: TaskFn<Args, Kind>,
        Args: Clone + Send + Sync + 'static,
        Kind: 'static,
    {
        self.push(BackgroundTask::new(function, args))
    }

    /// Adds an already built task at the end of the group.
    pub fn push(&mut self, task: BackgroundTask) -> &mut Self {
        self.steps.push(Step::Task(task));
        self
    }

    /// Appends another group after this group's tasks.
    ///
    /// A group of the same mode is spliced in task by task; a group of another
    /// mode (concurrent into sequential, say) becomes one step that keeps its
    /// own mode.
    pub fn merge(&mut self, mut other: BackgroundTasks) -> &mut Self {
        let steps = std::mem::take(&mut other.steps);
        if steps.is_empty() {
            return self;
        }
        if other.mode != self.mode {
            self.steps.push(Step::Group(BackgroundTasks {
                steps,
                mode: other.mode,
            }));
        } else if self.steps.is_empty() {
            // Reuse the other group's allocation.
            self.steps = steps;
        } else {
            self.steps.extend(steps);
        }
        self
    }

    /// How many tasks the group holds, nested groups included.
    pub fn len(&self) -> usize {
        self.steps
            .iter()
            .map(|step| match step {
                Step::Task(_) => 1,
                Step::Group(group) => group.len(),
            })
            .sum()
    }

    /// Whether the group holds no task.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The names of the group's tasks, in the order they were added.
    pub fn task_names(&self) -> Vec<String> {
        let mut names = Vec::with_capacity(self.steps.len());
        self.visit_names(&mut |name| names.push(name.to_owned()));
        names
    }

    pub(crate) fn visit_names(&self, visit: &mut dyn FnMut(&str)) {
        for step in &self.steps {
            match step {
                Step::Task(task) => visit(task.task_name()),
                Step::Group(group) => group.visit_names(visit),
            }
        }
    }

    /// Whether the tasks of this group run concurrently.
    pub fn is_concurrent(&self) -> bool {
        self.mode == Mode::Concurrent
    }

    /// `self`, then `next`: one sequence in which each group keeps its own
    /// mode. Without an allocation when either is empty, or when `self` is
    /// sequential already.
    pub(crate) fn then(mut self, next: BackgroundTasks) -> BackgroundTasks {
        if next.is_empty() {
            return self;
        }
        if self.is_empty() {
            return next;
        }
        if self.mode != Mode::Sequential {
            let mut sequence = BackgroundTasks::new();
            sequence.merge(self);
            self = sequence;
        }
        self.merge(next);
        self
    }

    /// Removes every task, so that dropping the group afterwards is silent.
    pub fn clear(&mut self) {
        self.steps.clear();
    }

    /// Takes the steps out, leaving an empty group of the same mode behind.
    pub(crate) fn take(&mut self) -> BackgroundTasks {
        BackgroundTasks {
            steps: std::mem::take(&mut self.steps),
            mode: self.mode,
        }
    }

    /// Drops the group on purpose: its tasks are accounted for elsewhere.
    pub(crate) fn discard(mut self) {
        self.clear();
    }
}

impl Clone for BackgroundTasks {
    fn clone(&self) -> Self {
        Self {
            steps: self.steps.clone(),
            mode: self.mode,
        }
    }
}

impl Drop for BackgroundTasks {
    // Only a warning: a group runs when it is handed on, never from here.
    fn drop(&mut self) {
        if self.steps.is_empty() || std::thread::panicking() {
            return;
        }
        tracing::warn!(
            tasks = ?self.task_names(),
            "a BackgroundTasks group was dropped without being returned or spawned; \
             its tasks never run (return it from the handler, or call clear() first)"
        );
        // Nested groups are part of this one: they need not warn again.
        for step in &mut self.steps {
            if let Step::Group(group) = step {
                group.clear();
            }
        }
    }
}

impl fmt::Debug for BackgroundTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundTasks")
            .field("mode", &self.mode)
            .field("steps", &self.steps)
            .finish_non_exhaustive()
    }
}

impl From<BackgroundTask> for BackgroundTasks {
    fn from(task: BackgroundTask) -> Self {
        // Exactly one: a first `push` would make room for four.
        Self::from_steps(vec![Step::Task(task)])
    }
}

impl<const N: usize> From<[BackgroundTask; N]> for BackgroundTasks {
    fn from(tasks: [BackgroundTask; N]) -> Self {
        tasks.into_iter().collect()
    }
}

impl From<Vec<BackgroundTask>> for BackgroundTasks {
    fn from(tasks: Vec<BackgroundTask>) -> Self {
        tasks.into_iter().collect()
    }
}

impl FromIterator<BackgroundTask> for BackgroundTasks {
    fn from_iter<I: IntoIterator<Item = BackgroundTask>>(iter: I) -> Self {
        let mut tasks = Self::new();
        Extend::extend(&mut tasks, iter);
        tasks
    }
}

impl Extend<BackgroundTask> for BackgroundTasks {
    fn extend<I: IntoIterator<Item = BackgroundTask>>(&mut self, iter: I) {
        self.steps.extend(iter.into_iter().map(Step::Task));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(name: &'static str) -> BackgroundTask {
        BackgroundTask::new(|| {}, ()).name(name)
    }

    #[test]
    fn from_list_and_add_task_keep_order() {
        let list = BackgroundTasks::from([named("a"), named("b")]);
        assert_eq!(list.task_names(), ["a", "b"]);

        let mut grown = BackgroundTasks::new();
        grown.add_task(|| {}, ()).add_task(|_: u8| async {}, (1,));
        assert_eq!(grown.len(), 2);
        assert!(!grown.is_concurrent());
    }

    #[test]
    fn merging_keeps_each_group_mode() {
        let mut sequence = BackgroundTasks::from([named("a")]);
        let mut set = BackgroundTasks::concurrent();
        set.push(named("b")).push(named("c"));
        sequence.merge(set);
        sequence.merge(BackgroundTasks::from([named("d")]));

        assert_eq!(sequence.task_names(), ["a", "b", "c", "d"]);
        assert_eq!(sequence.steps.len(), 3, "the concurrent set is one step");
        assert!(!sequence.is_concurrent());
    }

    #[test]
    fn then_makes_a_sequence_of_two_groups_each_in_its_mode() {
        let mut set = BackgroundTasks::concurrent();
        set.push(named("a")).push(named("b"));
        let alone = BackgroundTasks::new().then(set.clone());
        assert!(alone.is_concurrent(), "a lone group keeps its mode");
        let sequence = set.then(BackgroundTasks::from([named("c")]));
        assert!(!sequence.is_concurrent());
        assert_eq!(sequence.steps.len(), 2, "the set, then c");
        assert_eq!(sequence.task_names(), ["a", "b", "c"]);
    }

    #[test]
    fn an_empty_group_keeps_its_own_mode() {
        let mut empty = BackgroundTasks::new();
        let mut set = BackgroundTasks::concurrent();
        set.push(named("a")).push(named("b"));
        empty.merge(set);
        assert!(!empty.is_concurrent());
        assert_eq!(empty.steps.len(), 1, "the concurrent set is one step");
        assert_eq!(empty.len(), 2);
    }

    /// What `f` logged at WARN and above.
    fn warnings(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn a_group_dropped_with_tasks_warns_and_a_cleared_one_does_not() {
        let logged = warnings(|| {
            let mut forgotten = BackgroundTasks::new();
            forgotten.push(named("welcome email"));
        });
        assert!(
            logged.contains("dropped without being returned or spawned"),
            "{logged}"
        );
        assert!(logged.contains("welcome email"), "{logged}");

        let logged = warnings(|| {
            let mut cleared = BackgroundTasks::from([named("a")]);
            cleared.clear();
            let mut taken = BackgroundTasks::from([named("b")]);
            taken.take().discard();
        });
        assert!(logged.is_empty(), "{logged}");
    }
}

//! One background task: a function and the arguments it will be called with.

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use sync_wrapper::SyncWrapper;

/// One unit of background work: a task function plus the arguments it will be
/// called with, the Rust form of Esmerald's `BackgroundTask(func, *args)`.
///
/// The same constructor takes an `async fn` and a plain `fn`. Plain functions
/// run on tokio's blocking thread pool (through `spawn_blocking`), never on
/// an async worker thread, so a task that sleeps or does slow file I/O never
/// stalls request handling. Arguments are passed as a tuple of zero to twelve
/// values: `()`, `(a,)`, `(a, b)`, ...
///
/// A task function returns `()` or `Result<(), E>` with `E: Display`; an `Err`
/// is a failure, reported like a panic: counted in [`Stats`](crate::Stats) and
/// logged with the task's [`name`](BackgroundTask::name) and the error's
/// `Display`. Arguments are never logged, so a password passed to a task
/// stays out of the logs.
///
/// The function and its arguments must be `Clone + Send + Sync + 'static`:
/// a route-level task is a template copied for every request, a task may be
/// retried, and a response carries its tasks in its `http::Extensions`, which
/// ask for all four. Wrap a value that is not `Clone` in an `Arc`.
///
/// # Example
///
/// ```
/// use epilogue::BackgroundTask;
///
/// async fn send_email(to: String, message: &'static str) {
///     // talk to the mail server
/// #   let _ = (to, message);
/// }
///
/// fn write_in_file(line: String) -> std::io::Result<()> {
///     // blocking I/O is fine here: this runs on the blocking pool
/// #   let _ = line;
///     Ok(())
/// }
///
/// let email = BackgroundTask::new(send_email, ("ada@example.com".to_owned(), "Welcome"));
/// let audit = BackgroundTask::new(write_in_file, ("signed up".to_owned(),)).name("audit");
/// assert_eq!(audit.task_name(), "audit");
/// # let _ = email;
/// ```
#[must_use = "a BackgroundTask does nothing until it is handed to a response or a Runner"]
pub struct BackgroundTask {
    name: Cow<'static, str>,
    job: Box<dyn Job>,
    retry: Retry,
    timeout: Option<Duration>,
}

/// How often a failed task is tried again, and how long to wait in between.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Retry {
    pub(crate) retries: u32,
    pub(crate) backoff: Duration,
}

impl BackgroundTask {
    /// A task that calls `function(args...)` once it runs.
    ///
    /// `args` is a tuple whose items are passed as the function's arguments,
    /// in order. The task's name defaults to the function's type name (for a
    /// `fn` item, its path, such as `my_app::send_email`).
    pub fn new<F, Args, Kind>(function: F, args: Args) -> Self
    where
        F: TaskFn<Args, Kind>,
        Args: Clone + Send + Sync + 'static,
        Kind: 'static,
    {
        Self {
            name: Cow::Borrowed(std::any::type_name::<F>()),
            job: function.bind(args),
            retry: Retry::default(),
            timeout: None,
        }
    }

    /// Sets the name used in logs, spans and shutdown reports.
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// The name used in logs, spans and shutdown reports.
    pub fn task_name(&self) -> &str {
        &self.name
    }

    /// Tries the task again, up to `retries` more times, when it fails,
    /// panics or times out. The first retry waits `backoff`, each later one
    /// twice as long as the one before. Every attempt calls the function with
    /// a fresh clone of the arguments; only the last attempt's outcome is
    /// counted in [`Stats`](crate::Stats), the extra attempts in `retried`.
    pub fn retry(mut self, retries: u32, backoff: Duration) -> Self {
        self.retry = Retry { retries, backoff };
        self
    }

    /// Stops each attempt of this task after `timeout` and counts it as
    /// `timed_out`, whatever the runner's
    /// [`task_timeout`](crate::runner::Builder::task_timeout). An async task is
    /// dropped; a blocking one cannot be interrupted, so its thread runs on
    /// while the group moves on.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The task taken apart for its attempts, so that they keep its name
    /// and policies once the last attempt has taken its job.
    pub(crate) fn into_parts_for_attempts(
        self,
    ) -> (Cow<'static, str>, JobBox, Retry, Option<Duration>) {
        (self.name, JobBox(self.job), self.retry, self.timeout)
    }

    #[cfg(test)]
    fn into_parts(self) -> (Cow<'static, str>, Run) {
        (self.name, self.job.run())
    }
}

impl Clone for BackgroundTask {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            job: self.job.clone_box(),
            retry: self.retry,
            timeout: self.timeout,
        }
    }
}

impl fmt::Debug for BackgroundTask {
    // The arguments stay out of `Debug` on purpose: they may hold secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundTask")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a task returned, with the error already rendered: the runner only
/// needs its text, and rendering it where the task ran keeps `E` out of every
/// signature.
pub(crate) type TaskResult = Result<(), String>;

pub(crate) use private::Run;
use private::{Invoke, Job};

/// A task's function and arguments, its types erased.
pub(crate) struct JobBox(Box<dyn Job>);

impl JobBox {
    /// One attempt that leaves the job in place for another one.
    pub(crate) fn attempt(&self) -> Run {
        self.0.clone_box().run()
    }

    /// The last attempt: the arguments move into the call, no clone.
    pub(crate) fn into_run(self) -> Run {
        self.0.run()
    }
}

/// A plain function with its arguments, ready for the blocking pool.
pub(crate) type BlockingCall = Box<dyn FnOnce() -> TaskResult + Send>;

mod private {
    use super::*;

    /// How a task runs: polled on the async workers, or called on the
    /// blocking pool.
    pub enum Run {
        Async(Pin<Box<dyn Future<Output = TaskResult> + Send>>),
        Blocking(BlockingCall),
    }

    /// A function bound to its arguments, its concrete types erased so that
    /// tasks of different functions share one group. Public in a private
    /// module: `TaskFn::bind` names it, users cannot.
    pub trait Job: Send + Sync {
        fn run(self: Box<Self>) -> Run;
        fn clone_box(&self) -> Box<dyn Job>;
    }

    /// Calls a function with its arguments as a tuple.
    pub trait Invoke<Args> {
        type Output;
        fn invoke(self, args: Args) -> Self::Output;
    }
}

/// The values a task function may return: `()` or `Result<(), E: Display>`.
#[diagnostic::on_unimplemented(
    message = "a background task must return `()` or `Result<(), E>` with `E: Display`, not `{Self}`",
    label = "returned here",
    note = "map the value away: `.map(|_| ())`, or return `Ok(())`"
)]
pub trait TaskOutput: sealed::Sealed {
    #[doc(hidden)]
    fn into_task_result(self) -> Result<(), String>;
}

impl TaskOutput for () {
    fn into_task_result(self) -> Result<(), String> {
        Ok(())
    }
}

impl<E: fmt::Display> TaskOutput for Result<(), E> {
    fn into_task_result(self) -> Result<(), String> {
        self.map_err(|e| e.to_string())
    }
}

/// The two kinds of task function, which the compiler infers: users never
/// name them, so they are public only inside this private module.
mod kind {
    /// A task function that returns a future: it runs on the async workers.
    #[derive(Debug)]
    pub enum Async {}

    /// A plain task function: it runs on the blocking pool.
    #[derive(Debug)]
    pub enum Blocking {}
}
use kind::{Async, Blocking};

/// A function that [`BackgroundTask::new`] accepts with arguments `Args`.
///
/// Implemented for every `FnOnce` of up to twelve arguments that is
/// `Clone + Send + Sync + 'static` and returns either a [`TaskOutput`]
/// (a plain function: it runs on the blocking pool) or a future of one (an
/// async function). `Kind` tells the two apart; the compiler infers it. You
/// never implement it yourself.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a background task taking `{Args}`",
    label = "not a task function for these arguments",
    note = "a task function is an `async fn` or a plain `fn` (or a closure) that is `Clone + Send + Sync + 'static`",
    note = "its arguments are given as a tuple, `(a, b)`, `(a,)` or `()`, in order, each `Clone + Send + Sync + 'static` (wrap others in an `Arc`)",
    note = "it returns `()` or `Result<(), E>` with `E: Display` (an `async fn`: its future does, and is `Send`)"
)]
pub trait TaskFn<Args, Kind>: Clone + Send + Sync + 'static {
    #[doc(hidden)]
    fn bind(self, args: Args) -> Box<dyn Job>;
}

macro_rules! impl_task_fn {
    ($($arg:ident),*) => {
        impl<F, R, $($arg,)*> Invoke<($($arg,)*)> for F
        where
            F: FnOnce($($arg),*) -> R,
        {
            type Output = R;

            #[allow(non_snake_case)]
            fn invoke(self, ($($arg,)*): ($($arg,)*)) -> R {
                self($($arg),*)
            }
        }

        impl<F, Fut, $($arg,)*> TaskFn<($($arg,)*), Async> for F
        where
            F: FnOnce($($arg),*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: TaskOutput,
            $($arg: Clone + Send + Sync + 'static,)*
        {
            fn bind(self, args: ($($arg,)*)) -> Box<dyn Job> {
                Box::new(AsyncJob::<F, ($($arg,)*), Fut> {
                    call: Some((self, args)),
                    running: None,
                })
            }
        }

        impl<F, R, $($arg,)*> TaskFn<($($arg,)*), Blocking> for F
        where
            F: FnOnce($($arg),*) -> R + Clone + Send + Sync + 'static,
            R: TaskOutput,
            $($arg: Clone + Send + Sync + 'static,)*
        {
            fn bind(self, args: ($($arg,)*)) -> Box<dyn Job> {
                Box::new(BlockingJob { function: self, args })
            }
        }
    };
}

impl_task_fn!();
impl_task_fn!(A1);
impl_task_fn!(A1, A2);
impl_task_fn!(A1, A2, A3);
impl_task_fn!(A1, A2, A3, A4);
impl_task_fn!(A1, A2, A3, A4, A5);
impl_task_fn!(A1, A2, A3, A4, A5, A6);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7, A8);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11);
impl_task_fn!(A1, A2, A3, A4, A5, A6, A7, A8, A9, A10, A11, A12);

pin_project! {
    /// An async function with its arguments and, once polled, its future:
    /// one allocation from `BackgroundTask::new` to the task's end, as the
    /// job becomes the future it runs.
    struct AsyncJob<F, Args, Fut> {
        call: Option<(F, Args)>,
        // The future is never shared, only polled: the wrapper makes the
        // job `Sync`, as a task must be, whatever the future is.
        #[pin]
        running: Option<SyncWrapper<Fut>>,
    }
}

impl<F, Args, Fut> Job for AsyncJob<F, Args, Fut>
where
    F: Invoke<Args, Output = Fut> + Clone + Send + Sync + 'static,
    Args: Clone + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: TaskOutput,
{
    fn run(self: Box<Self>) -> Run {
        Run::Async(Box::into_pin(self))
    }

    fn clone_box(&self) -> Box<dyn Job> {
        // Only a task not yet run is cloned: running consumes it.
        let (function, args) = self.call.as_ref().expect("a task is cloned before it runs");
        Box::new(AsyncJob::<F, Args, Fut> {
            call: Some((function.clone(), args.clone())),
            running: None,
        })
    }
}

impl<F, Args, Fut> Future for AsyncJob<F, Args, Fut>
where
    F: Invoke<Args, Output = Fut>,
    Fut: Future,
    Fut::Output: TaskOutput,
{
    type Output = TaskResult;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TaskResult> {
        let mut this = self.project();
        if let Some((function, args)) = this.call.take() {
            this.running
                .set(Some(SyncWrapper::new(function.invoke(args))));
        }
        let running = this
            .running
            .as_mut()
            .as_pin_mut()
            .expect("a task polled after it completed");
        let output = ready!(running.get_pin_mut().poll(cx));
        this.running.set(None);
        Poll::Ready(output.into_task_result())
    }
}

/// A plain function with its arguments.
#[derive(Clone)]
struct BlockingJob<F, Args> {
    function: F,
    args: Args,
}

impl<F, Args, R> Job for BlockingJob<F, Args>
where
    F: Invoke<Args, Output = R> + Clone + Send + Sync + 'static,
    Args: Clone + Send + Sync + 'static,
    R: TaskOutput,
{
    fn run(self: Box<Self>) -> Run {
        let BlockingJob { function, args } = *self;
        Run::Blocking(Box::new(move || function.invoke(args).into_task_result()))
    }

    fn clone_box(&self) -> Box<dyn Job> {
        Box::new(self.clone())
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for () {}
    impl<E> Sealed for Result<(), E> {}
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn greet(name: String, n: u32) -> Result<(), String> {
        if n == 0 {
            Err(format!("no greeting for {name}"))
        } else {
            Ok(())
        }
    }

    fn blocking(n: u32) {
        assert!(n > 0);
    }

    #[test]
    fn name_defaults_to_the_function_path() {
        let task = BackgroundTask::new(greet, ("ada".to_owned(), 1));
        assert_eq!(task.task_name(), "epilogue::task::tests::greet");
        assert_eq!(task.name("hello").task_name(), "hello");
    }

    #[test]
    fn debug_never_shows_arguments() {
        let task = BackgroundTask::new(greet, ("s3cret-password".to_owned(), 1));
        let shown = format!("{task:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("greet"), "{shown}");
    }

    #[tokio::test]
    async fn async_and_blocking_functions_share_one_constructor() {
        let (_, run) = BackgroundTask::new(greet, ("ada".to_owned(), 0)).into_parts();
        match run {
            Run::Async(fut) => assert_eq!(fut.await, Err("no greeting for ada".to_owned())),
            Run::Blocking(_) => panic!("an async fn must run on the async workers"),
        }
        let (_, run) = BackgroundTask::new(blocking, (3,)).into_parts();
        match run {
            Run::Blocking(call) => assert_eq!(call(), Ok(())),
            Run::Async(_) => panic!("a plain fn must run on the blocking pool"),
        }
    }

    #[tokio::test]
    async fn clones_run_independently() {
        let task = BackgroundTask::new(|n: u32| async move { Err::<(), _>(n) }, (7,));
        for _ in 0..2 {
            let (_, Run::Async(fut)) = task.clone().into_parts() else {
                panic!("async closure")
            };
            assert_eq!(fut.await, Err("7".to_owned()));
        }
    }
}

//! Serving until Ctrl-C or SIGTERM, then draining: actix-web's graceful
//! shutdown and the runner's, within one grace period.

use std::io;
use std::pin::pin;
use std::time::Duration;

use actix_web::dev::Server;
use tokio::time::Instant;

use crate::runner::{Runner, ShutdownReport};

/// Runs `server` until Ctrl-C or SIGTERM, then shuts down within `grace`,
/// as [`axum::serve`](crate::axum::serve) does:
///
/// 1. the server stops accepting connections (`ServerHandle::stop(true)`),
///    and the responses in flight finish: their tasks are admitted and
///    start as their bodies go out;
/// 2. once the server has stopped, the runner drains what is left of
///    `grace` ([`Runner::shutdown`]), and the report says what ran and
///    what was cut off;
/// 3. a second signal, or the end of `grace`, cuts the background work off
///    at once (the connections still open close when the process exits).
///
/// Build the server with `.disable_signals()`, so that this function alone
/// reacts to the signal, and `.shutdown_timeout(..)` of at most `grace`
/// (in seconds), so that a connection that never finishes does not hold
/// the server past it. If the server stops by itself (an error, or its own
/// signal handling), the runner drains for `grace` too.
///
/// # Errors
///
/// The server's own error, once the runner has drained (its report is
/// logged).
///
/// ```no_run
/// use std::time::Duration;
/// use actix_web::{web, App, HttpServer};
/// use epilogue::{actix::Background, Runner};
///
/// #[tokio::main]
/// async fn main() -> std::io::Result<()> {
///     let runner = Runner::builder()
///         .runtime(tokio::runtime::Handle::current())
///         .build();
///     let app_runner = runner.clone();
///     let server = HttpServer::new(move || {
///         App::new()
///             .route("/healthz", web::get().to(|| async { "ok" }))
///             .wrap(Background::new(app_runner.clone()))
///     })
///     .disable_signals()
///     .shutdown_timeout(30)
///     .bind("127.0.0.1:3000")?
///     .run();
///     let report = epilogue::actix::run(server, runner, Duration::from_secs(30)).await?;
///     println!("{report:?}");
///     Ok(())
/// }
/// ```
pub async fn run(server: Server, runner: Runner, grace: Duration) -> io::Result<ShutdownReport> {
    let handle = server.handle();
    let mut server = pin!(server);
    let mut stopped = None;
    tokio::select! {
        result = &mut server => stopped = Some(result),
        () = crate::shutdown_signal() => {}
    }
    let fired = Instant::now();
    // `None`: a grace too long for `Instant`, that is, no deadline.
    let deadline = fired.checked_add(grace);
    let until_deadline = async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let mut until_deadline = pin!(until_deadline);
    let mut second = pin!(crate::shutdown_signal());
    let mut cut_short = false;
    let served = match stopped {
        Some(result) => result,
        None => {
            // The command is sent now; the future it returns only waits for
            // what the server, polled below, does with it.
            drop(handle.stop(true));
            tokio::select! {
                result = &mut server => result,
                () = &mut until_deadline => {
                    tracing::warn!("the grace period ended before the server stopped; cutting background tasks off");
                    runner.cut_off_now();
                    Ok(())
                }
                () = &mut second => {
                    tracing::warn!("second signal: cutting background tasks off now");
                    cut_short = true;
                    runner.cut_off_now();
                    Ok(())
                }
            }
        }
    };
    runner.close();
    let remaining = match deadline {
        Some(deadline) => deadline.saturating_duration_since(Instant::now()),
        None => grace,
    };
    let mut drain = pin!(runner.shutdown(remaining));
    let report = if cut_short {
        drain.await
    } else {
        tokio::select! {
            report = &mut drain => report,
            () = &mut second => {
                tracing::warn!("second signal: cutting background tasks off now");
                runner.cut_off_now();
                drain.await
            }
        }
    };
    served.map(|()| report)
}

//! The library half of `epilogue-demo`: its routes, configuration, input
//! and tasks, public so that the load benchmarks' comparator (`bench/baseline`)
//! runs the very same task and input code without epilogue.

pub mod app;
pub mod config;
pub mod durable;
pub mod input;
pub mod service;
pub mod tasks;

use std::io::{IsTerminal, Write};

use tracing_subscriber::EnvFilter;

/// Raises the soft limit on open files to the hard one (at most 1,048,576):
/// each connection takes one, and `serve` caps connections at three
/// quarters of the soft limit (16,384 at most), so that thousands of
/// stalled clients leave room for new ones. A failure is logged, not fatal.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        use nix::sys::resource::{getrlimit, setrlimit, Resource};
        const MOST: u64 = 1 << 20;
        match getrlimit(Resource::RLIMIT_NOFILE) {
            Ok((soft, hard)) if soft < hard.min(MOST) => {
                if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard.min(MOST), hard) {
                    tracing::warn!(soft, hard, "cannot raise the open files limit: {error}");
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!("cannot read the open files limit: {error}"),
        }
    }
}

/// The log filter unless `RUST_LOG` says otherwise: `info`, but sqlx's
/// notices of already-applied migrations only at `warn`, and River's
/// executor at `warn`: its per-attempt `river_job` span is at INFO, and the
/// fmt layer formats an enabled span's fields when it is created and tracks
/// it on every poll: about a tenth of a durable task's instructions in a
/// worker process (callgrind, bench/durable.sh's throughput case). Its
/// warnings and errors still show, without the job's span;
/// `RUST_LOG=info,sqlx=warn` brings the span back. (The runner's and
/// epilogue-durable's per-task spans are DEBUG for the same reason.)
const DEFAULT_LOG_FILTER: &str = "info,sqlx=warn,riverqueue::client::executor=warn";

/// Logs to stderr, at `DEFAULT_LOG_FILTER` unless `RUST_LOG` says
/// otherwise: stdout carries only the "listening on" line.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG_FILTER)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written (stderr full or closed) is
        // dropped: reporting it with `eprintln!` would panic, and a service
        // must not die of its own log.
        .log_internal_errors(false)
        .init();
}

/// Installs the Prometheus recorder that `GET /metrics` renders, with
/// buckets for the histograms of task durations (0.5 ms to 60 s), and
/// starts its upkeep: every second, on a thread of its own, the histograms'
/// samples are folded into their buckets, so that memory stays bounded
/// whether or not anyone scrapes, and the folding never stalls a request.
///
/// # Errors
///
/// When a recorder is installed already.
pub fn install_metrics() -> Result<metrics_exporter_prometheus::PrometheusHandle, String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

    const SECONDS: &[f64] = &[
        0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".to_owned())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            upkeep.run_upkeep();
        })
        .map_err(|e| format!("cannot start the metrics upkeep: {e}"))?;
    Ok(handle)
}

/// Binds `addr` and prints the one stdout line of the contract,
/// `listening on http://HOST:PORT`, with the real port.
///
/// # Errors
///
/// A message that names the address, when it cannot be bound, or when
/// stdout cannot be written.
pub async fn listen(addr: &str) -> Result<tokio::net::TcpListener, String> {
    use std::io::Write;

    let listener = bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{local}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("cannot write to stdout: {e}"))?;
    Ok(listener)
}

/// How many connections may wait to be accepted. `TcpListener::bind` asks
/// for 128, as the standard library does: a burst of a few hundred
/// connections overflows it, and the clients left out retry their `SYN` a
/// second later. Linux caps it at `net.core.somaxconn` (4096 by default).
const BACKLOG: u32 = 4096;

/// `TcpListener::bind`, with a [`BACKLOG`] fit for bursts: the first of
/// `addr`'s addresses that can be bound.
async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last_error = None;
    for addr in tokio::net::lookup_host(addr).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does: a restarted server can bind its port
        // again while connections of the previous one are in TIME_WAIT.
        #[cfg(not(windows))]
        socket.set_reuseaddr(true)?;
        match socket.bind(addr).and_then(|()| socket.listen(BACKLOG)) {
            Ok(listener) => return Ok(listener),
            Err(error) => last_error = Some(error),
        }
    }
    Err(last_error.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the address resolves to nothing",
        )
    }))
}

/// The exit of a binary of this crate: success, or the error printed to
/// stderr once, under the program's name, and exit code 1. Not logged as
/// well: the log goes to stderr too, where it would say it a second time.
pub fn exit(program: &str, result: Result<(), String>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // Not `eprintln!`, which panics when stderr cannot be written.
            let _ = writeln!(std::io::stderr(), "{program}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

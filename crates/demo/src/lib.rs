//! The library half of `epilogue-demo`: its routes, configuration, input
//! and tasks, public so that the load benchmarks' comparator (`bench/baseline`)
//! runs the very same task and input code without epilogue.

pub mod app;
pub mod config;
pub mod input;
pub mod tasks;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Logs to stderr, at `info` unless `RUST_LOG` says otherwise: stdout
/// carries only the "listening on" line.
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

//! `epilogue-demo`: the five background-task patterns of the reference
//! documentation as one small service, plus durable tasks. Its behaviour is
//! fixed by its README (crates/demo/README.md); run it with
//! `cargo run --release -p epilogue-demo`.

use std::process::ExitCode;

use clap::Parser;

use epilogue_demo::config::{Command, Config};
use epilogue_demo::service;

fn main() -> ExitCode {
    epilogue_demo::init_logging();
    epilogue_demo::raise_open_files_limit();
    let config = Config::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return epilogue_demo::exit(
                "epilogue-demo",
                Err(format!("cannot start tokio: {error}")),
            )
        }
    };
    let result = runtime.block_on(async {
        match &config.command {
            Some(Command::Worker(flags)) => service::work(flags).await,
            None => service::serve(config).await,
        }
    });
    // A plain `fn` task cut off at the shutdown deadline cannot be stopped:
    // its thread runs on. Dropping the runtime would wait for it, and let it
    // finish the work the report has just called cut off; exiting now keeps
    // the report true.
    runtime.shutdown_background();
    epilogue_demo::exit("epilogue-demo", result)
}

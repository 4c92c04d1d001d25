//! The contract tests of `crates/demo/tests/shutdown.rs`, run against this binary.

#[path = "../../demo/tests/shutdown.rs"]
mod shutdown;

//! The contract tests of `crates/demo/tests/failures.rs`, run against this binary.

#[path = "../../demo/tests/failures.rs"]
mod failures;

//! The contract tests of `crates/demo/tests/responsiveness.rs`, run against this binary.

#[path = "../../demo/tests/responsiveness.rs"]
mod responsiveness;

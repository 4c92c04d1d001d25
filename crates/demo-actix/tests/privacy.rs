//! The contract tests of `crates/demo/tests/privacy.rs`, run against this binary.

#[path = "../../demo/tests/privacy.rs"]
mod privacy;

//! The contract tests of `crates/demo/tests/routes.rs`, run against this binary.

#[path = "../../demo/tests/routes.rs"]
mod routes;

//! The compile errors of the common mistakes say what a task may take and
//! return (`#[diagnostic::on_unimplemented]`). Their exact text is in
//! `compile_fail/*.stderr`; `TRYBUILD=overwrite cargo test --test
//! compile_errors` writes it again after a change of compiler.

#[test]
fn common_mistakes_are_explained() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/compile_fail/*.rs");
}

//! Promise (Self-protection): the password of the durable store's URL
//! appears nowhere, not in `--help` nor in the error of a store that cannot
//! be reached. The store is `epilogue-demo`'s alone, so these tests are not
//! in `privacy.rs`, which `epilogue-demo-actix` runs too.

mod common;

use common::Demo;

/// The password of every store URL given here.
const SECRET: &str = "s3cret-store-pw";

/// The store URL's password, given in `EPILOGUE_STORE`, is not shown by
/// `--help` (clap shows environment values unless told not to).
#[tokio::test]
async fn help_does_not_show_the_store_urls_password() {
    let scratch = common::Scratch::new();
    for args in [&["--help"][..], &["worker", "--help"][..]] {
        let mut command = Demo::command();
        command.args(args).env(
            "EPILOGUE_STORE",
            format!("postgres://app:{SECRET}@127.0.0.1:1/app"),
        );
        let exited = common::run_to_exit(command, &scratch).await;
        assert!(exited.status.success(), "{args:?}: {}", exited.stderr);
        assert!(exited.stdout.contains("--store"), "{}", exited.stdout);
        assert!(
            !exited.stdout.contains(SECRET) && !exited.stderr.contains(SECRET),
            "{args:?} shows the password:\n{}",
            exited.stdout
        );
    }
}

/// A store that cannot be reached is reported, at the most verbose log
/// level, without the password of its URL.
#[tokio::test]
async fn an_unreachable_stores_error_does_not_show_its_password() {
    let scratch = common::Scratch::new();
    let mut command = Demo::command();
    command
        .args(["--addr", "127.0.0.1:0", "--data-dir"])
        .arg(scratch.path().join("data"))
        .env("RUST_LOG", "trace")
        // Port 1: nothing listens there.
        .env(
            "EPILOGUE_STORE",
            format!("postgres://app:{SECRET}@127.0.0.1:1/app"),
        );
    let exited = common::run_to_exit(command, &scratch).await;
    assert_eq!(exited.status.code(), Some(1), "{}", exited.stderr);
    assert!(
        exited.stderr.contains("cannot open the durable task store"),
        "{}",
        exited.stderr
    );
    assert!(!exited.stderr.contains(SECRET), "{}", exited.stderr);
    assert!(!exited.stdout.contains(SECRET), "{}", exited.stdout);
}

//! The throwaway PostgreSQL of `common::postgres` itself: it starts, answers,
//! goes away on `stop`, comes back on `restart` and leaves nothing behind.

mod common;

use common::postgres::{accepts_connections, Postgres};

#[test]
fn a_cluster_starts_stops_restarts_and_cleans_up() {
    let postgres = Postgres::start();
    let dir = postgres.dir().to_owned();
    assert!(dir.is_dir());
    assert_eq!(
        postgres.url(),
        format!("postgres://postgres@127.0.0.1:{}/epilogue", postgres.port())
    );
    assert_eq!(postgres.psql("select 1"), "1");
    assert_eq!(postgres.psql("select current_database()"), "epilogue");

    postgres.stop();
    assert!(
        !accepts_connections(postgres.addr()),
        "{} still accepts connections after stop",
        postgres.addr()
    );
    postgres.stop(); // idempotent

    postgres.restart();
    assert_eq!(postgres.psql("select 1"), "1");

    drop(postgres);
    assert!(!dir.exists(), "{} is still there", dir.display());
}

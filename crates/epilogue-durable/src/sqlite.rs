//! SQLite pools for a durable store.

use riverqueue::sqlx::sqlite::{SqliteConnection, SqlitePoolOptions};
use riverqueue::sqlx::Connection;

/// Pool options that a durable store on SQLite needs: start from these when
/// you build the pool yourself for [`Store::sqlite`](crate::Store::sqlite).
///
/// A connection that comes back to the pool still inside a transaction is
/// closed instead of kept. sqlx 0.9 can give one back that way after a
/// failed `COMMIT` (a full disk, an I/O error): it then turns every later
/// `BEGIN` on that connection into a savepoint of the dead transaction, so
/// what seems committed never reaches the file. This hook is the workaround
/// (`docs/sqlx-sqlite-failed-commit.md` has the report).
///
/// Set WAL, a busy timeout and `synchronous = FULL` on the connect options
/// yourself; River sets no pragma.
pub fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new().after_release(|connection, _| {
        Box::pin(async move { Ok(left_outside_a_transaction(connection).await) })
    })
}

/// Whether a connection given back to the pool may serve the next caller.
async fn left_outside_a_transaction(connection: &mut SqliteConnection) -> bool {
    // The round trip lets a rollback that a dropped transaction queued run
    // first, so that the depth below is the connection's real one.
    if connection.ping().await.is_err() {
        return false;
    }
    if connection.is_in_transaction() {
        tracing::warn!("a durable store connection came back inside a transaction (a failed COMMIT); closing it");
        return false;
    }
    true
}

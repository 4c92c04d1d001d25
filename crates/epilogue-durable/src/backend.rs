//! The user's pool, SQLite or PostgreSQL, and the few things this crate
//! does with it directly: River's migrations, the write transaction of a
//! batch, and counting tasks by state.

use std::time::Duration;

use riverqueue::sqlx;

use crate::error::DurableError;

/// The pool the store was built from: the user's, with their sizes and
/// timeouts.
#[derive(Clone, Debug)]
pub(crate) enum Pool {
    /// An SQLite pool.
    #[cfg(feature = "sqlite")]
    Sqlite(sqlx::SqlitePool),
    /// A PostgreSQL pool.
    #[cfg(feature = "postgres")]
    Postgres(sqlx::PgPool),
}

/// Runs `$body` with `$pool` bound to the pool, whichever the backend.
/// Runs `$body` with `$pool` bound to the pool and `db` to its backend's
/// module below, whichever the backend: both answer the same calls.
macro_rules! with_pool {
    ($self:expr, $pool:ident => $body:expr) => {
        match $self {
            #[cfg(feature = "sqlite")]
            Pool::Sqlite($pool) => {
                use sqlite as db;
                $body
            }
            #[cfg(feature = "postgres")]
            Pool::Postgres($pool) => {
                use postgres as db;
                $body
            }
        }
    };
}

impl Pool {
    /// Opens a pool at `url` with the settings a durable store needs.
    pub(crate) async fn open(url: &str) -> Result<Self, DurableError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            #[cfg(feature = "sqlite")]
            "sqlite" => {
                use std::str::FromStr;

                use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
                use sqlx::Connection;
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                let options = SqliteConnectOptions::from_str(url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    // River sets no pragma: an acknowledged task must
                    // survive a power loss, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(5));
                if !in_memory {
                    // The file is created here, once. A connection the pool
                    // opens later must not create a new, empty file where
                    // the store's was deleted: SQLite would pair it with the
                    // old file's WAL and shared memory, and truncate the
                    // shared memory that the open connections map (SIGBUS).
                    let first = connect_first(options.clone().create_if_missing(true)).await?;
                    first.close().await?;
                }
                let options = options.create_if_missing(in_memory);
                let mut pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(8)
                    .acquire_timeout(Duration::from_secs(5));
                if in_memory {
                    // An in-memory database lives as long as a connection
                    // to it, and (unless shared-cache) in that one only.
                    pool = pool
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None);
                }
                let pool = pool.connect_with(options).await?;
                Ok(Self::Sqlite(pool))
            }
            #[cfg(feature = "postgres")]
            "postgres" | "postgresql" => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    .connect(url)
                    .await?;
                Ok(Self::Postgres(pool))
            }
            _ => Err(DurableError::UnsupportedUrl {
                scheme: scheme.chars().take(32).collect(),
            }),
        }
    }

    /// Creates or upgrades River's tables, recorded in River's own
    /// `river_migration` table: never in the application's
    /// `_sqlx_migrations`, so the two migrators ignore each other.
    ///
    /// River's migrators read the applied versions, then apply the others,
    /// each in a transaction of its own: processes that start together on
    /// a fresh store race, and the losers fail on what the winner created
    /// ("table river_migration already exists", a duplicate `pg_type`). A
    /// later look finds those applied, so a failure is tried again up to 12
    /// times, for about 8 seconds in all.
    pub(crate) async fn migrate(&self) -> Result<(), DurableError> {
        // About 8 s in all: processes started together on a loaded machine
        // may each take a second or more to migrate.
        const ATTEMPTS: u32 = 12;
        let mut attempt = 1;
        loop {
            match with_pool!(self, pool => db::migrate(pool).await) {
                Ok(()) => return Ok(()),
                Err(error) if attempt < ATTEMPTS => {
                    tracing::debug!(%error, attempt, "migrating the durable store failed; trying again");
                    // Racing processes that started together should not
                    // try again in step: a few milliseconds of their own.
                    let own = u64::from(std::process::id() % 37);
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt) + own)).await;
                    attempt += 1;
                }
                Err(error) => return Err(DurableError::Migrate(error)),
            }
        }
    }

    /// How many tasks are in each of River's states.
    pub(crate) async fn count_by_state(&self) -> Result<Vec<(String, i64)>, DurableError> {
        const COUNT: &str = "SELECT CAST(state AS TEXT), count(*) FROM river_job GROUP BY state";
        let counts = match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => sqlx::query_as(COUNT).fetch_all(pool).await,
            #[cfg(feature = "postgres")]
            Self::Postgres(pool) => sqlx::query_as(COUNT).fetch_all(pool).await,
        };
        Ok(counts?)
    }

    /// The SQLite file, if the store is one.
    pub(crate) fn sqlite_file(&self) -> Option<std::path::PathBuf> {
        match self {
            #[cfg(feature = "sqlite")]
            Self::Sqlite(pool) => {
                let options = pool.connect_options();
                let path = options.get_filename();
                // `:memory:` and friends have no file to watch.
                (!path.as_os_str().is_empty() && !path.starts_with(":memory:"))
                    .then(|| path.to_path_buf())
            }
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }
}

/// The first connection to a SQLite file, which may turn it to WAL. That
/// needs the file to itself, and SQLite answers "database is locked" at
/// once, without its busy timeout, when another process starting at the
/// same moment holds it: wait and try again, for up to about 5 s.
#[cfg(feature = "sqlite")]
async fn connect_first(
    options: sqlx::sqlite::SqliteConnectOptions,
) -> Result<sqlx::SqliteConnection, sqlx::Error> {
    use sqlx::ConnectOptions;
    const SQLITE_BUSY: &str = "5";
    let mut attempt = 1;
    loop {
        match options.connect().await {
            Err(error)
                if attempt < 50
                    && error.as_database_error().and_then(|e| e.code()).as_deref()
                        == Some(SQLITE_BUSY) =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
                attempt += 1;
            }
            connected => return connected,
        }
    }
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use riverqueue::sqlx;

    use crate::task::BoxError;

    pub(super) async fn migrate(pool: &sqlx::SqlitePool) -> Result<(), BoxError> {
        riverqueue::migrate::SqliteMigrator::new(pool.clone())
            .migrate_up()
            .await?;
        Ok(())
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use riverqueue::sqlx;

    use crate::task::BoxError;

    pub(super) async fn migrate(pool: &sqlx::PgPool) -> Result<(), BoxError> {
        riverqueue::migrate::PostgresMigrator::new(pool.clone())
            .migrate_up()
            .await?;
        Ok(())
    }
}

//! River's migrations and the application's own sqlx migrations share one
//! SQLite file, in either order and across restarts, without either
//! complaining: River keeps its versions in `river_migration`, never in
//! `_sqlx_migrations`.

mod common;

use std::path::Path;

use common::{recv, shut_down, task_in, Db};
use epilogue::Runner;
use epilogue_durable::{BoxError, DurableTask, Job, Store, TaskId, TaskState};
use serde::{Deserialize, Serialize};
use sqlx::migrate::Migrator;
use sqlx::SqlitePool;
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

/// Writes the application's `(version, name, sql)` migrations to `dir` and runs them on `pool`.
async fn migrate(dir: &Path, pool: &SqlitePool, migrations: &[(i64, &str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (version, name, sql) in migrations {
        std::fs::write(dir.join(format!("{version}_{name}.sql")), sql).unwrap();
    }
    let migrator = Migrator::new(dir.to_path_buf()).await.unwrap();
    migrator.run(pool).await.unwrap();
}

const USERS: (i64, &str, &str) = (
    1,
    "users",
    "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL);",
);
const ORDERS: (i64, &str, &str) = (
    2,
    "orders",
    "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id));",
);

/// The application's own pool on the file.
async fn app_pool(db: &Db) -> SqlitePool {
    SqlitePool::connect_with(db.options()).await.unwrap()
}

async fn applied_versions(pool: &SqlitePool) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn river_versions(pool: &SqlitePool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM river_migration")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn has_table(pool: &SqlitePool, name: &str) -> bool {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name = ?",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .unwrap()
        == 1
}

#[derive(Serialize, Deserialize)]
struct Note {
    text: String,
}

impl DurableTask for Note {
    const NAME: &'static str = "note";
    type State = UnboundedSender<String>;
    type Output = ();

    async fn run(self, _: Job, notes: Self::State) -> Result<(), BoxError> {
        let _ = notes.send(self.text);
        Ok(())
    }
}

/// Starts a store on the file (`pool`, or one opened from the URL), runs a
/// task through it, and shuts it down.
async fn run_a_task(db: &Db, pool: Option<SqlitePool>, text: &str) -> TaskId {
    let runner = Runner::new();
    let (notes, mut received) = unbounded_channel();
    let builder = match pool {
        Some(pool) => Store::sqlite(pool),
        None => Store::open(&db.url).await.unwrap(),
    };
    let store = builder
        .register::<Note>(notes)
        .start(&runner)
        .await
        .unwrap();
    let id = store
        .enqueue(&Note {
            text: text.to_owned(),
        })
        .await
        .unwrap();
    assert_eq!(recv(&mut received, "the note").await, text);
    task_in::<Note>(&store, id, TaskState::Succeeded).await;
    shut_down(&runner).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_applications_migrations_first_then_the_store_then_both_again() {
    let db = Db::new();
    let dir = db.dir.path().join("migrations");
    let pool = app_pool(&db).await;
    migrate(&dir, &pool, &[USERS]).await;
    assert_eq!(applied_versions(&pool).await, [1]);

    run_a_task(&db, None, "first").await;
    assert!(river_versions(&pool).await > 0);
    assert_eq!(
        applied_versions(&pool).await,
        [1],
        "River wrote in _sqlx_migrations"
    );

    // A new release: one more migration of the application's, then the
    // store again.
    migrate(&dir, &pool, &[USERS, ORDERS]).await;
    assert_eq!(applied_versions(&pool).await, [1, 2]);
    let river = river_versions(&pool).await;

    // A restart: the store, then the application's migrations, again.
    run_a_task(&db, None, "after the restart").await;
    migrate(&dir, &pool, &[USERS, ORDERS]).await;
    assert_eq!(applied_versions(&pool).await, [1, 2]);
    assert_eq!(river_versions(&pool).await, river);
    assert!(has_table(&pool, "users").await);
    assert!(has_table(&pool, "orders").await);
    assert!(has_table(&pool, "river_job").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_first_then_the_applications_migrations_on_the_same_pool() {
    let db = Db::new();
    let dir = db.dir.path().join("migrations");
    let pool = app_pool(&db).await;

    // The store on the application's own pool, before any migration of
    // its own.
    run_a_task(&db, Some(pool.clone()), "first").await;
    assert!(river_versions(&pool).await > 0);
    assert!(!has_table(&pool, "_sqlx_migrations").await);
    let river = river_versions(&pool).await;

    migrate(&dir, &pool, &[USERS]).await;
    assert_eq!(applied_versions(&pool).await, [1]);

    // A restart, the other way round: the application's migrations (one
    // more), then the store on a pool of its own.
    migrate(&dir, &pool, &[USERS, ORDERS]).await;
    run_a_task(&db, None, "after the restart").await;
    assert_eq!(applied_versions(&pool).await, [1, 2]);
    assert_eq!(river_versions(&pool).await, river);
    // And once more on the shared pool.
    run_a_task(&db, Some(pool.clone()), "on the shared pool").await;
    migrate(&dir, &pool, &[USERS, ORDERS]).await;
    assert_eq!(applied_versions(&pool).await, [1, 2]);
    assert!(has_table(&pool, "users").await);
    assert!(has_table(&pool, "orders").await);
}

//! The durable half of the demo: tasks stored before the response, their
//! routes, and the worker that runs them (in the service, or alone with
//! `epilogue-demo worker`).

use std::io::{self, Read};
use std::path::{Path as FilePath, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use epilogue::axum::Admitted;
use epilogue_durable::{
    BoxError, DurableError, DurableTask, Enqueue, Job, RequestDurable, Store, StoreBuilder, TaskId,
    TaskState,
};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::input::{ApiError, Credentials};
use crate::tasks::{DurableRun, Outbox};

/// The largest upload `POST /files` takes: 10 MiB.
pub const MAX_UPLOAD_BYTES: usize = 10 * 1024 * 1024;

/// The most of an upload held in memory on its way to disk.
const UPLOAD_WRITE_BUFFER: usize = 64 * 1024;

/// `POST /durable/register`: a welcome email that survives a crash.
#[derive(Serialize, Deserialize)]
pub struct Welcome {
    email: String,
}

impl DurableTask for Welcome {
    const NAME: &'static str = "welcome_durable";
    type State = Outbox;
    type Output = ();

    async fn run(self, job: Job, outbox: Outbox) -> Result<(), BoxError> {
        outbox
            .send(Some(self.email), "Welcome (durable).", Some(run_of(&job)))
            .await?;
        Ok(())
    }
}

/// `POST /durable/fail?times=N`: fails its first `times` attempts, then
/// sends an email.
#[derive(Serialize, Deserialize)]
pub struct Recovering {
    times: u32,
}

impl DurableTask for Recovering {
    const NAME: &'static str = "recovering_durable";
    const MAX_ATTEMPTS: u32 = 5;
    type State = Outbox;
    type Output = ();

    async fn run(self, job: Job, outbox: Outbox) -> Result<(), BoxError> {
        if job.attempt() <= self.times {
            return Err(format!(
                "fails on purpose: attempt {} of the first {}",
                job.attempt(),
                self.times
            )
            .into());
        }
        outbox
            .send(None, "Recovered (durable).", Some(run_of(&job)))
            .await?;
        Ok(())
    }
}

/// `POST /files`: the upload's size, lines and SHA-256.
#[derive(Serialize, Deserialize)]
pub struct ProcessFile {
    /// The upload's name under `DATA_DIR/files`.
    upload: String,
}

/// What [`ProcessFile`] finds.
#[derive(Serialize, Deserialize)]
pub struct FileSummary {
    bytes: u64,
    lines: u64,
    sha256: String,
}

/// Where uploads are kept: `DATA_DIR/files/<task id>`.
#[derive(Clone, Debug)]
pub struct Uploads(Arc<FilePath>);

impl Uploads {
    /// Opens (creates) `dir/files`.
    ///
    /// # Errors
    ///
    /// When it cannot be created; the message names it.
    pub fn open(dir: &FilePath) -> io::Result<Self> {
        let dir = dir.join("files");
        std::fs::create_dir_all(&dir).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", dir.display()))
        })?;
        Ok(Self(dir.into()))
    }

    /// Where the upload `name` is; `None` for a name that is not one of
    /// ours (it comes from the store: it must not reach outside the
    /// directory).
    fn path(&self, name: &str) -> Option<PathBuf> {
        let ours = name.len() == 26 && name.bytes().all(|b| b.is_ascii_alphanumeric());
        ours.then(|| self.0.join(name))
    }

    /// Streams `body` to disk, whole and synced, under a temporary name
    /// first: a file under its final name is complete, and no failure (a
    /// full disk, a body cut short or too large, the client gone and the
    /// request dropped) leaves the temporary one behind. At most one chunk
    /// of it is in memory at a time. Returns its name.
    async fn receive(&self, mut body: Body) -> Result<String, UploadError> {
        let name = ulid::Ulid::new().to_string();
        let path = self.0.join(&name);
        let mut partial = Partial {
            path: path.with_extension("partial"),
            kept: false,
        };
        let mut file = tokio::fs::File::create(&partial.path)
            .await
            .map_err(UploadError::Disk)?;
        // tokio copies each write into a buffer of up to 2 MiB by default:
        // per upload in flight, that is most of what it costs in memory.
        file.set_max_buf_size(UPLOAD_WRITE_BUFFER);
        let mut size = 0;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(UploadError::Body)?;
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            size += chunk.len();
            if size > MAX_UPLOAD_BYTES {
                return Err(UploadError::TooLarge);
            }
            if let Err(error) = file.write_all(&chunk).await {
                // Read the rest (it is bounded) before the 503: most HTTP/1
                // clients read no answer before their whole body is sent,
                // and the connection stays usable for the next request.
                drain(&mut body, size).await;
                return Err(UploadError::Disk(error));
            }
        }
        file.flush().await.map_err(UploadError::Disk)?;
        file.sync_all().await.map_err(UploadError::Disk)?;
        drop(file);
        tokio::fs::rename(&partial.path, &path)
            .await
            .map_err(UploadError::Disk)?;
        partial.kept = true;
        // The rename itself is durable once the directory is synced.
        let dir = self.0.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(&*dir)?.sync_all())
            .await
            .map_err(io::Error::other)
            .and_then(|synced| synced)
            .map_err(UploadError::Disk)?;
        Ok(name)
    }

    fn remove(&self, name: &str) {
        if let Some(path) = self.path(name) {
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::error!(%error, path = %path.display(), "cannot remove an upload");
            }
        }
    }
}

/// Reads and drops what is left of an upload, up to the upload limit in
/// all (`read` bytes of it were read already).
async fn drain(body: &mut Body, mut read: usize) {
    while let Some(Ok(frame)) = body.frame().await {
        read += frame.data_ref().map_or(0, |data| data.len());
        if read > MAX_UPLOAD_BYTES {
            return;
        }
    }
}

/// An upload being written under its temporary name: removed when dropped
/// before it was kept.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            if let Err(error) = std::fs::remove_file(&self.path) {
                tracing::error!(%error, path = %self.path.display(), "cannot remove a partial upload");
            }
        }
    }
}

/// Why an upload was not stored; nothing of it is left on disk.
#[derive(Debug)]
enum UploadError {
    TooLarge,
    /// The request body failed: cut short, or stalled past the server's
    /// body read timeout (answered 408 by `serve` whatever we say).
    Body(axum::Error),
    Disk(io::Error),
}

impl From<UploadError> for ApiError {
    fn from(error: UploadError) -> Self {
        match error {
            UploadError::TooLarge => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the upload is larger than {} MiB", MAX_UPLOAD_BYTES >> 20),
            ),
            UploadError::Body(error) => ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the upload was cut short: {error}"),
            ),
            UploadError::Disk(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
                ) =>
            {
                tracing::error!(%error, "cannot store an upload");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the disk is full; nothing was stored, try again later".to_owned(),
                )
            }
            UploadError::Disk(error) => {
                tracing::error!(%error, "cannot store an upload");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the upload could not be stored".to_owned(),
                )
            }
        }
    }
}

impl DurableTask for ProcessFile {
    const NAME: &'static str = "process_file";
    type State = Uploads;
    type Output = FileSummary;

    async fn run(self, _: Job, uploads: Uploads) -> Result<FileSummary, BoxError> {
        let path = uploads
            .path(&self.upload)
            .ok_or_else(|| format!("{:?} is not an upload's name", self.upload))?;
        let summary = tokio::task::spawn_blocking(move || summarise(&path)).await??;
        Ok(summary)
    }
}

fn summarise(path: &FilePath) -> io::Result<FileSummary> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    let (mut bytes, mut lines) = (0u64, 0u64);
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = file.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        let read = &chunk[..n];
        hash.update(read);
        bytes += n as u64;
        lines += read.iter().filter(|&&b| b == b'\n').count() as u64;
    }
    let sha256 = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(FileSummary {
        bytes,
        lines,
        sha256,
    })
}

fn run_of(job: &Job) -> DurableRun {
    DurableRun {
        task_id: job.id().to_string(),
        attempt: job.attempt(),
    }
}

/// `--tick-every-s`: an email once a period, across every process on the
/// store.
#[derive(Serialize, Deserialize)]
pub struct Tick {}

impl DurableTask for Tick {
    const NAME: &'static str = "tick";
    type State = Outbox;
    type Output = ();

    async fn run(self, job: Job, outbox: Outbox) -> Result<(), BoxError> {
        outbox.send(None, "tick", Some(run_of(&job))).await?;
        Ok(())
    }
}

/// Every durable task kind of the demo, as `worker --only` names them.
pub const KINDS: [&str; 4] = [
    Welcome::NAME,
    Recovering::NAME,
    ProcessFile::NAME,
    Tick::NAME,
];

/// What a process of the demo registers on its store.
pub struct Registration<'a> {
    /// Where emails go.
    pub outbox: Outbox,
    /// Where uploads are.
    pub uploads: Uploads,
    /// Durable tasks run at once (`--workers`).
    pub concurrency: usize,
    /// One attempt's limit (`--durable-timeout-s`).
    pub timeout: std::time::Duration,
    /// `--tick-every-s`, if not 0.
    pub tick_every: Option<std::time::Duration>,
    /// `--only`: the kinds to run; `None` for all of them.
    pub only: Option<&'a [String]>,
}

impl Registration<'_> {
    /// Registers the demo's durable tasks (those of `--only`) on `store`.
    pub fn register(self, mut store: StoreBuilder) -> StoreBuilder {
        let runs = |kind: &str| self.only.is_none_or(|only| only.iter().any(|k| k == kind));
        if runs(Welcome::NAME) {
            store = store.register::<Welcome>(self.outbox.clone());
        }
        if runs(Recovering::NAME) {
            store = store.register::<Recovering>(self.outbox.clone());
        }
        if runs(ProcessFile::NAME) {
            store = store.register::<ProcessFile>(self.uploads);
        }
        if runs(Tick::NAME) {
            store = store.register::<Tick>(self.outbox);
        }
        if let Some(period) = self.tick_every {
            store = store.every(period, || Tick {});
        }
        if self.only.is_some() {
            // An older release knows fewer kinds: River's leader would
            // discard the orphaned tasks of the kinds it does not know.
            store = store.without_leader_election();
        }
        store.concurrency(self.concurrency).timeout(self.timeout)
    }
}

/// `?delay_s=N` on `POST /durable/register`.
#[derive(Deserialize)]
pub struct DelayQuery {
    delay_s: Option<u64>,
}

/// The longest `?delay_s=`: a day.
const MAX_DELAY_S: u64 = 86_400;

/// `POST /durable/register`: 201 once the task is committed.
pub async fn register(
    _: Admitted,
    durable: RequestDurable,
    headers: HeaderMap,
    query: Result<Query<DelayQuery>, QueryRejection>,
    user: Credentials,
) -> Result<Response, ApiError> {
    let mut options = Enqueue::new();
    if let Some(key) = headers.get("idempotency-key") {
        let key = key
            .to_str()
            .ok()
            .filter(|key| {
                (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic())
            })
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "`Idempotency-Key` must be 1 to 255 visible ASCII characters".to_owned(),
                )
            })?;
        options = options.idempotency_key(key);
    }
    let Query(DelayQuery { delay_s }) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{}; expected `?delay_s=N` with N from 0 to {MAX_DELAY_S}",
                rejection.body_text()
            ),
        )
    })?;
    if let Some(delay_s) = delay_s {
        if delay_s > MAX_DELAY_S {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("`delay_s` must be from 0 to {MAX_DELAY_S}"),
            ));
        }
        options = options.delay(std::time::Duration::from_secs(delay_s));
    }
    let enqueued = durable
        .enqueue_with(&Welcome { email: user.email }, options)
        .await
        .map_err(not_stored)?;
    Ok(created("Email sent", enqueued.id))
}

#[derive(Deserialize)]
pub struct TimesQuery {
    #[serde(default = "one")]
    times: u32,
}

fn one() -> u32 {
    1
}

/// `POST /durable/fail?times=N`.
pub async fn fail(
    _: Admitted,
    durable: RequestDurable,
    query: Result<Query<TimesQuery>, QueryRejection>,
    _: Credentials,
) -> Result<Response, ApiError> {
    let Query(TimesQuery { times }) = query.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!(
                "{}; expected `?times=N` with N from 0 to 100",
                rejection.body_text()
            ),
        )
    })?;
    if times > 100 {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "`times` must be from 0 to 100".to_owned(),
        ));
    }
    let id = durable
        .enqueue(&Recovering { times })
        .await
        .map_err(not_stored)?;
    Ok(created("Created", id))
}

fn created(message: &str, id: TaskId) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({ "message": message, "task_id": id })),
    )
        .into_response()
}

/// `POST /files`: 202 once the upload is on disk and its task is stored.
///
/// The body is streamed to disk as it comes. The task is stored here rather
/// than by the executing layer: if the store cannot be written, the upload
/// is removed before the 503, so that a 503 leaves nothing behind.
pub async fn upload(
    _: Admitted,
    State(uploads): State<Uploads>,
    State(store): State<Store>,
    body: Body,
) -> Result<Response, ApiError> {
    // Past 10 MiB it stops reading, and answers 413. Not sooner, from the
    // `Content-Length`: most HTTP/1 clients read no answer before they have
    // sent their whole body, and would see the connection closed instead.
    let upload = uploads.receive(body).await?;
    let id = match store
        .enqueue(&ProcessFile {
            upload: upload.clone(),
        })
        .await
    {
        Ok(id) => id,
        Err(error) => {
            let _ = tokio::task::spawn_blocking(move || uploads.remove(&upload)).await;
            return Err(not_stored(error));
        }
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/files/{id}"))],
        Json(json!({ "id": id, "status": "queued" })),
    )
        .into_response())
}

/// `GET /files/{id}`.
pub async fn file_status(
    State(store): State<Store>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let not_found = || ApiError::new(StatusCode::NOT_FOUND, "no such file".to_owned());
    let id: TaskId = id.parse().map_err(|_| not_found())?;
    let info = match store.task::<ProcessFile>(id).await {
        Ok(info) => info.ok_or_else(not_found)?,
        Err(DurableError::WrongKind { .. }) => return Err(not_found()),
        Err(error) => return Err(unavailable(error)),
    };
    let status = match info.state {
        TaskState::Queued | TaskState::Scheduled => "queued",
        TaskState::Running => "running",
        TaskState::Retrying => "retrying",
        TaskState::Succeeded => "done",
        _ => "dead",
    };
    Ok(Json(json!({
        "id": info.id,
        "status": status,
        "attempts": info.attempts,
        "result": info.output,
    })))
}

/// The task was not committed: 503 when the store is down (nothing was
/// stored, try again), 500 for a mistake of ours.
fn not_stored(error: DurableError) -> ApiError {
    if error.is_unavailable() {
        return unavailable(error);
    }
    tracing::error!(%error, "cannot store a durable task");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the durable task could not be stored".to_owned(),
    )
}

/// The store could not be read or written: 503, and the other routes go on.
fn unavailable(error: DurableError) -> ApiError {
    tracing::error!(%error, "the durable store failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "the durable task store is unavailable; try again".to_owned(),
    )
}

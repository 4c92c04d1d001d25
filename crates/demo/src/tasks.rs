//! The demo's background tasks: the two functions of the reference
//! documentation, one `async`, one plain (blocking).
//!
//! Both append one line per record to a file of the data directory through
//! an `AppendFile`: each record is one `write` of the whole line, built in
//! memory, to a file opened with `O_APPEND`, and a write that fails or falls
//! short is rolled back (the file cut back to its length before it), so a
//! record is whole or absent, even on a full disk. A file renamed or deleted
//! while the service runs (logrotate) is noticed before the next write and
//! opened again at its path.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;

/// How many sent emails `GET /outbox` keeps: a long load test must not grow
/// the process.
const RECENT_EMAILS: usize = 10_000;

/// Where emails go: `outbox.jsonl`, and the most recent ones in memory.
#[derive(Clone)]
pub struct Outbox(Arc<OutboxInner>);

struct OutboxInner {
    delay: Duration,
    // One lock for the file and the list, so both hold the same order.
    sent: Mutex<(AppendFile, VecDeque<Email>)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Email {
    to: Option<String>,
    message: &'static str,
    sent_at: String,
    /// A durable task's id and attempt; absent for in-memory tasks.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    durable: Option<DurableRun>,
}

/// Which durable task sent an email, and on which attempt.
#[derive(Clone, Debug, Serialize)]
pub struct DurableRun {
    pub task_id: String,
    pub attempt: u32,
}

impl Outbox {
    /// Opens (creates) `dir/outbox.jsonl`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened; the message names the file.
    pub fn open(dir: &Path, delay: Duration) -> io::Result<Self> {
        let file = AppendFile::open(dir.join("outbox.jsonl"))?;
        Ok(Self(Arc::new(OutboxInner {
            delay,
            sent: Mutex::new((file, VecDeque::new())),
        })))
    }

    /// The simulated time to send one email.
    pub fn delay(&self) -> Duration {
        self.0.delay
    }

    /// The most recent emails, oldest first.
    pub fn recent(&self) -> Vec<Email> {
        let sent = self.0.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.1.iter().cloned().collect()
    }
}

/// Sends one email (simulated): waits the email delay, then appends one JSON
/// line to `outbox.jsonl` (serde_json escapes every control character, so a
/// value cannot break the line).
pub async fn send_email_notification(
    outbox: Outbox,
    to: Option<String>,
    message: &'static str,
) -> io::Result<()> {
    outbox.send(to, message, None).await
}

impl Outbox {
    /// Sends one email, from a durable task when `durable` says which.
    ///
    /// # Errors
    ///
    /// When the line cannot be written to `outbox.jsonl`.
    pub async fn send(
        &self,
        to: Option<String>,
        message: &'static str,
        durable: Option<DurableRun>,
    ) -> io::Result<()> {
        send(self.clone(), to, message, durable).await
    }
}

async fn send(
    outbox: Outbox,
    to: Option<String>,
    message: &'static str,
    durable: Option<DurableRun>,
) -> io::Result<()> {
    if !outbox.0.delay.is_zero() {
        tokio::time::sleep(outbox.0.delay).await;
    }
    let email = Email {
        to,
        message,
        sent_at: Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true),
        durable,
    };
    let mut line = serde_json::to_vec(&email)?;
    line.push(b'\n');
    let mut sent = outbox.0.sent.lock().unwrap_or_else(|e| e.into_inner());
    let (file, recent) = &mut *sent;
    file.append(&line)?;
    // Only what is in the file is listed.
    if recent.len() == RECENT_EMAILS {
        recent.pop_front();
    }
    recent.push_back(email);
    Ok(())
}

/// `log.txt`, written by the blocking task.
#[derive(Clone)]
pub struct AuditLog(Arc<AuditLogInner>);

struct AuditLogInner {
    delay: Duration,
    file: Mutex<AppendFile>,
}

impl AuditLog {
    /// Opens (creates) `dir/log.txt`.
    ///
    /// # Errors
    ///
    /// When the file cannot be opened; the message names the file.
    pub fn open(dir: &Path, delay: Duration) -> io::Result<Self> {
        Ok(Self(Arc::new(AuditLogInner {
            delay,
            file: Mutex::new(AppendFile::open(dir.join("log.txt"))?),
        })))
    }
}

/// A plain `fn`, as slow disk I/O would be: blocks for the log delay, then
/// appends `Notification sent @ <time>[ to: <email>]` to `log.txt`.
/// epilogue runs it on the blocking pool, so it never stalls the service.
///
/// The email is written escaped (see [`push_printable`]): whatever it holds,
/// it cannot end the line, forge another, or make the file binary.
pub fn write_in_file(log: AuditLog, email: Option<String>) -> io::Result<()> {
    if !log.0.delay.is_zero() {
        std::thread::sleep(log.0.delay);
    }
    let now = Utc::now().format("%Y-%m-%d %H:%M:%S");
    let mut line = format!("Notification sent @ {now}");
    if let Some(email) = email {
        line.push_str(" to: ");
        push_printable(&mut line, &email);
    }
    line.push('\n');
    let mut file = log.0.file.lock().unwrap_or_else(|e| e.into_inner());
    file.append(line.as_bytes())
}

/// Appends `value` to `line` with every character that is not printable
/// written as a Rust escape, `\u{a}` for a line feed, and `\` as `\\` so that
/// an escape in the file always means an escaped character.
///
/// Not printable: control characters (C0 with NUL, `\n` and `\r`; DEL; C1),
/// and the invisible characters that change how a line reads: zero-width
/// characters and marks, line and paragraph separators, bidirectional
/// embeddings, overrides and isolates, the byte order mark.
pub fn push_printable(line: &mut String, value: &str) {
    for c in value.chars() {
        if c == '\\' {
            line.push_str("\\\\");
        } else if is_unprintable(c) {
            // Writing to a String cannot fail.
            let _ = write!(line, "\\u{{{:x}}}", u32::from(c));
        } else {
            line.push(c);
        }
    }
}

fn is_unprintable(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200B}'..='\u{200F}'
                | '\u{2028}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{FEFF}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// What `POST /fail` asks its first task to do.
#[derive(Clone, Copy, Debug, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    Error,
    Panic,
}

/// A task that fails the way it is told to, to show that the next task of
/// its group still runs.
pub async fn fail(mode: FailMode) -> Result<(), String> {
    match mode {
        FailMode::Error => Err("the mail server refused the message (simulated)".to_owned()),
        FailMode::Panic => panic!("a background task panicked (simulated)"),
    }
}

/// What the `chaos` task's email says when an attempt of it succeeds.
pub const CHAOS_SURVIVED: &str = "Chaos survived.";

/// How many more times `POST /chaos`'s task is tried after a failed attempt.
pub const CHAOS_RETRIES: u32 = 2;

/// The wait before its first retry (doubled before the next one).
pub const CHAOS_BACKOFF: Duration = Duration::from_millis(10);

/// Its timeout per attempt, past the email delay.
pub const CHAOS_TIMEOUT: Duration = Duration::from_millis(50);

/// How long an attempt that hangs sleeps, past the email delay: a hundred
/// times its timeout, so that it is always stopped by it, however late the
/// clock is read.
pub const CHAOS_HANG: Duration = Duration::from_secs(5);

/// What one attempt of the `chaos` task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChaosOutcome {
    /// Sends its email: `email(to=email, "Chaos survived.")`.
    Succeed,
    /// Returns an error.
    Fail,
    /// Panics.
    Panic,
    /// Sleeps [`CHAOS_HANG`] (and the email delay), far past its timeout.
    Hang,
}

/// What attempt `attempt` (0 for the first) of the chaos task of `email`
/// does: drawn from a small PRNG (splitmix64) seeded with the FNV-1a hash
/// of the email and the attempt number. Random-looking across emails and
/// attempts, and a pure function of them, so that whoever knows the email
/// knows what each attempt does: 30 % succeed, the rest fail, panic or hang
/// in equal parts.
pub fn chaos_outcome(email: &str, attempt: u32) -> ChaosOutcome {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in email.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut x = hash.wrapping_add(
        u64::from(attempt)
            .wrapping_add(1)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15),
    );
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    match x % 100 {
        0..30 => ChaosOutcome::Succeed,
        30..53 => ChaosOutcome::Fail,
        53..76 => ChaosOutcome::Panic,
        _ => ChaosOutcome::Hang,
    }
}

/// The task of `POST /chaos`: each attempt draws what it does with
/// [`chaos_outcome`] from `to` and its attempt number, counted by `attempts`
/// (shared by every attempt's copy of the arguments).
pub async fn chaos(outbox: Outbox, to: String, attempts: Arc<AtomicU32>) -> Result<(), String> {
    let attempt = attempts.fetch_add(1, Ordering::Relaxed);
    match chaos_outcome(&to, attempt) {
        ChaosOutcome::Succeed => send_email_notification(outbox, Some(to), CHAOS_SURVIVED)
            .await
            .map_err(|e| e.to_string()),
        ChaosOutcome::Fail => Err(format!(
            "attempt {}: the mail server refused the message (simulated)",
            attempt + 1
        )),
        ChaosOutcome::Panic => panic!(
            "attempt {}: a background task panicked (simulated)",
            attempt + 1
        ),
        ChaosOutcome::Hang => {
            tokio::time::sleep(CHAOS_HANG.saturating_add(outbox.delay())).await;
            Err("woke up long after its timeout".to_owned())
        }
    }
}

/// A file of records, one line each, appended to by this process only (the
/// callers hold a lock around it): opened with `O_APPEND`, reopened at its
/// path when the path names another file or none (rotated, deleted).
struct AppendFile {
    path: PathBuf,
    file: File,
    /// `(st_dev, st_ino)` of `file`.
    id: (u64, u64),
}

impl AppendFile {
    fn open(path: PathBuf) -> io::Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| naming("cannot open", &path, e))?;
        let metadata = file
            .metadata()
            .map_err(|e| naming("cannot inspect", &path, e))?;
        Ok(Self {
            id: (metadata.dev(), metadata.ino()),
            file,
            path,
        })
    }

    /// Appends one record, whole or not at all, to the file at the path now.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let before = self.follow_path()?;
        append_record(&mut self.file, before, line)
            .map_err(|e| naming("cannot write to", &self.path, e))
    }

    /// Opens the path again when it no longer names the open file: renamed
    /// away or deleted (logrotate), or replaced by another file. Returns
    /// the file's length, from the same look at the path: one `statx` per
    /// record, not two (a durable task in a worker process is one record).
    fn follow_path(&mut self) -> io::Result<u64> {
        match fs::metadata(&self.path) {
            Ok(metadata) if (metadata.dev(), metadata.ino()) == self.id => {
                return Ok(metadata.len())
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(naming("cannot inspect", &self.path, e)),
        }
        *self = Self::open(self.path.clone())?;
        tracing::info!(
            path = %self.path.display(),
            "the file was moved or deleted; writing to a new one at its path"
        );
        let metadata = self
            .file
            .metadata()
            .map_err(|e| naming("cannot inspect", &self.path, e))?;
        Ok(metadata.len())
    }
}

/// `error`, said of `path`: `cannot open /data/outbox.jsonl: Permission denied`.
fn naming(what: &str, path: &Path, error: io::Error) -> io::Error {
    io::Error::new(error.kind(), format!("{what} {}: {error}", path.display()))
}

/// Where records are appended: a [`File`] opened for appending, or a fake in
/// the tests (a disk that fills up).
trait Records {
    /// One `write(2)` at the end: how many bytes went.
    fn write_once(&mut self, bytes: &[u8]) -> io::Result<usize>;
    /// Cuts the records back to `len` bytes.
    fn truncate(&mut self, len: u64) -> io::Result<()>;
}

impl Records for File {
    fn write_once(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write(bytes)
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.set_len(len)
    }
}

/// Appends `record` with a single write, so that records of concurrent
/// writers never interleave; when the write fails or is short (a full disk),
/// cuts the file back to `before`, its length before the write, so that no
/// fragment stays for the next record to be glued to.
fn append_record(records: &mut impl Records, before: u64, record: &[u8]) -> io::Result<()> {
    let error = loop {
        match records.write_once(record) {
            Ok(n) if n == record.len() => return Ok(()),
            Ok(n) => {
                break io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {n} of {} bytes", record.len()),
                )
            }
            // Interrupted before anything was written: try again.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => break e,
        }
    };
    match records.truncate(before) {
        Ok(()) => Err(error),
        Err(cut) => Err(io::Error::new(
            error.kind(),
            format!("{error}; and the partial record could not be removed: {cut}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with `room` bytes free.
    struct SmallDisk {
        bytes: Vec<u8>,
        room: usize,
        /// How a write that does not fit ends: short (what Linux does on a
        /// full disk), or with an error after part of it went (what some
        /// file systems do).
        fails_after_partial: bool,
    }

    impl SmallDisk {
        fn new(room: usize, fails_after_partial: bool) -> Self {
            Self {
                bytes: Vec::new(),
                room,
                fails_after_partial,
            }
        }
    }

    /// Appends as `AppendFile::append` does, the length taken just before.
    fn append(disk: &mut SmallDisk, record: &[u8]) -> io::Result<()> {
        let before = disk.bytes.len() as u64;
        append_record(disk, before, record)
    }

    impl Records for SmallDisk {
        fn write_once(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let n = bytes.len().min(self.room);
            self.bytes.extend_from_slice(&bytes[..n]);
            self.room -= n;
            if n == 0 || (n < bytes.len() && self.fails_after_partial) {
                Err(io::Error::from_raw_os_error(28)) // ENOSPC
            } else {
                Ok(n)
            }
        }

        fn truncate(&mut self, len: u64) -> io::Result<()> {
            let len = usize::try_from(len).expect("a small length");
            self.room += self.bytes.len() - len;
            self.bytes.truncate(len);
            Ok(())
        }
    }

    fn a_record_that_does_not_fit_leaves_no_fragment(fails_after_partial: bool) {
        let first = b"{\"to\":\"a@example.com\"}\n";
        let second = b"{\"to\":\"b@example.com\",\"message\":\"longer\"}\n";
        let mut disk = SmallDisk::new(first.len() + 20, fails_after_partial);
        append(&mut disk, first).expect("the first record fits");

        let error = append(&mut disk, second).expect_err("the second does not fit");
        assert!(
            error.kind() == io::ErrorKind::WriteZero || error.raw_os_error() == Some(28),
            "{error}"
        );
        assert_eq!(disk.bytes, first, "a fragment of the second record stayed");

        // Room again: the next record lands whole, after the first.
        disk.room = 1000;
        append(&mut disk, second).expect("room again");
        assert_eq!(disk.bytes, [&first[..], &second[..]].concat());
    }

    #[test]
    fn a_short_write_is_rolled_back() {
        a_record_that_does_not_fit_leaves_no_fragment(false);
    }

    #[test]
    fn a_write_that_fails_midway_is_rolled_back() {
        a_record_that_does_not_fit_leaves_no_fragment(true);
    }

    #[test]
    fn a_full_disk_writes_nothing() {
        let mut disk = SmallDisk::new(0, false);
        assert!(append(&mut disk, b"line\n").is_err());
        assert!(disk.bytes.is_empty());
    }

    #[test]
    fn chaos_outcomes_are_a_function_of_the_email_and_attempt_and_mixed() {
        let mut counts = std::collections::BTreeMap::new();
        for n in 0..10_000 {
            let email = format!("user{n}@example.com");
            for attempt in 0..3 {
                let outcome = chaos_outcome(&email, attempt);
                assert_eq!(outcome, chaos_outcome(&email, attempt));
                *counts.entry(outcome).or_insert(0u32) += 1;
            }
        }
        // 30 % / 23 % / 23 % / 24 % of 30 000, give or take.
        for (outcome, share) in [
            (ChaosOutcome::Succeed, 9_000),
            (ChaosOutcome::Fail, 6_900),
            (ChaosOutcome::Panic, 6_900),
            (ChaosOutcome::Hang, 7_200),
        ] {
            let n = counts[&outcome];
            assert!(n.abs_diff(share) < 600, "{outcome:?}: {n} of 30 000");
        }
    }

    fn printable(value: &str) -> String {
        let mut line = String::new();
        push_printable(&mut line, value);
        line
    }

    #[test]
    fn unprintable_characters_are_escaped() {
        assert_eq!(printable("ada@example.com"), "ada@example.com");
        assert_eq!(printable("zoë@exämple.com"), "zoë@exämple.com");
        assert_eq!(
            printable("a\nNotification sent @ x\r\0\u{7f}\u{85}\u{202e}\u{2028}\t\u{1b}[31m"),
            "a\\u{a}Notification sent @ x\\u{d}\\u{0}\\u{7f}\\u{85}\\u{202e}\\u{2028}\\u{9}\\u{1b}[31m"
        );
        assert_eq!(printable(r"a\u{a}b"), r"a\\u{a}b");
    }

    /// A scratch directory for one test, removed at its end.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("epilogue-demo-unit-{name}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).expect("a scratch directory");
            Self(path)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_rotated_or_deleted_file_is_opened_again() {
        let scratch = Scratch::new("rotation");
        let path = scratch.0.join("records");
        let mut file = AppendFile::open(path.clone()).expect("open");
        file.append(b"one\n").expect("append");

        fs::rename(&path, scratch.0.join("records.1")).expect("rename");
        file.append(b"two\n").expect("append after a rename");
        assert_eq!(fs::read(&path).expect("the new file"), b"two\n");
        assert_eq!(
            fs::read(scratch.0.join("records.1")).expect("old"),
            b"one\n"
        );

        fs::remove_file(&path).expect("delete");
        file.append(b"three\n").expect("append after a delete");
        assert_eq!(fs::read(&path).expect("the new file"), b"three\n");

        // Replaced by another file: written to the one at the path.
        fs::write(scratch.0.join("other"), b"zero\n").expect("another file");
        fs::rename(scratch.0.join("other"), &path).expect("replace");
        file.append(b"four\n").expect("append after a replacement");
        assert_eq!(fs::read(&path).expect("the new file"), b"zero\nfour\n");
    }

    #[test]
    fn errors_name_the_file() {
        let scratch = Scratch::new("naming");
        let path = scratch.0.join("outbox.jsonl");
        fs::create_dir(&path).expect("a directory where the file goes");
        let error = Outbox::open(&scratch.0, Duration::ZERO)
            .err()
            .expect("cannot open a directory for appending");
        let message = error.to_string();
        assert!(
            message.starts_with(&format!("cannot open {}: ", path.display())),
            "{message}"
        );
    }
}

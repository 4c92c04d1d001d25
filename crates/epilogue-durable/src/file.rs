//! The SQLite file a store opened, and whether it is still the one: a file
//! deleted or replaced under the process keeps taking commits from the
//! connections that have it open, into a file nobody will open again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::error::DurableError;

/// How often the file is checked besides after each batch.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A store's SQLite file.
#[derive(Debug)]
pub(crate) struct StoreFile {
    path: PathBuf,
    /// Its device and inode when the store opened it.
    opened: Option<(u64, u64)>,
    lost: AtomicBool,
}

impl StoreFile {
    /// The file at `path`, as it is now; checked every 2 s from now on, for
    /// as long as the store lives.
    pub(crate) fn watch(path: PathBuf) -> Arc<Self> {
        let file = Arc::new(Self {
            opened: identity(&path),
            path,
            lost: AtomicBool::new(false),
        });
        tokio::spawn(check_every(Arc::downgrade(&file)));
        file
    }

    /// `Err` once the file was found deleted or replaced: the store refuses
    /// everything from then on, until the process is restarted.
    pub(crate) fn ensure_intact(&self) -> Result<(), DurableError> {
        if self.lost.load(Ordering::Acquire) {
            return Err(self.error());
        }
        Ok(())
    }

    /// Looks at the file now; `Err` if it is no longer the one opened.
    /// A `stat`: cheap on a local file system, and done once per batch.
    pub(crate) fn check(&self) -> Result<(), DurableError> {
        self.ensure_intact()?;
        if identity(&self.path) != self.opened {
            if !self.lost.swap(true, Ordering::AcqRel) {
                tracing::error!(
                    file = %self.path.display(),
                    "the durable task store's file was deleted or replaced; durable tasks are refused until the process is restarted"
                );
            }
            return Err(self.error());
        }
        Ok(())
    }

    fn error(&self) -> DurableError {
        DurableError::StoreLost {
            path: self.path.display().to_string(),
        }
    }
}

async fn check_every(file: Weak<StoreFile>) {
    let mut ticks = tokio::time::interval(CHECK_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(file) = file.upgrade() else {
            return;
        };
        // On the blocking pool: a file system that hangs must not stall a
        // worker thread of the runtime.
        let checked = tokio::task::spawn_blocking(move || file.check().is_ok()).await;
        if !matches!(checked, Ok(true)) {
            return;
        }
    }
}

#[cfg(unix)]
fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(not(unix))]
fn identity(path: &std::path::Path) -> Option<(u64, u64)> {
    // No inode: a deleted file is noticed, a replaced one is not.
    std::fs::metadata(path).ok().map(|_| (0, 0))
}

//! A tmpfs of its own for a test that needs a full disk (as root, as CI
//! runs).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// A tmpfs of its own for one test, unmounted and its mount point removed
/// when dropped, also when the test fails.
pub struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts one of `size`; the error says why not (a container without
    /// the right to mount, say).
    pub fn mount(size: &str) -> Result<Self, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "epilogue-demo-tmpfs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // A leftover of an earlier run that had the same process id.
        let _ = Command::new("umount").arg(&dir).output();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("cannot create the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0755")])
            .arg("tmpfs")
            .arg(&dir)
            .output();
        match output {
            Ok(output) if output.status.success() => Ok(Self { dir }),
            failed => {
                let _ = fs::remove_dir(&dir);
                Err(match failed {
                    Ok(output) => format!(
                        "mount -t tmpfs failed ({}): {}",
                        output.status,
                        String::from_utf8_lossy(&output.stderr).trim()
                    ),
                    Err(e) => format!("cannot run mount: {e}"),
                })
            }
        }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.dir)
            .output()
            .is_ok_and(|output| output.status.success());
        if !unmounted {
            // Something still has a file open there: detach it anyway.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        }
        let _ = fs::remove_dir(&self.dir);
    }
}

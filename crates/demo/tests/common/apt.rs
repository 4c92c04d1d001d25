//! Installing a Debian package a test needs, when it is missing: the tests
//! run on a fresh machine with only the Rust toolchain (CI runs them as
//! root).

use std::process::{Command, Stdio};
use std::sync::Mutex;

use nix::unistd::geteuid;

/// Installs `package` with apt-get unless `present()` says it is there;
/// panics with what to do when it cannot (not root, no network).
pub fn ensure(package: &str, needed_by: &str, present: impl Fn() -> bool) {
    // apt-get takes a lock of its own; tests of one binary wait for each
    // other here rather than fail on it.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if present() {
        return;
    }
    assert!(
        geteuid().is_root(),
        "{needed_by} needs Debian's `{package}` package, and this test is not root, so it \
         cannot install it: run `apt-get install -y {package}` as root (CI runs the tests as root)"
    );
    let apt_get = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run apt-get to install {package}: {e}"))
    };
    let install = ["install", "-y", "--no-install-recommends", package];
    let mut installed = apt_get(&install);
    if !installed.status.success() {
        // A fresh image has no package lists yet.
        apt_get(&["update"]);
        installed = apt_get(&install);
    }
    assert!(
        installed.status.success() && present(),
        "cannot install {package} (`apt-get install -y {package}`: {}); {needed_by} needs it:\n{}",
        installed.status,
        String::from_utf8_lossy(&installed.stderr)
    );
}

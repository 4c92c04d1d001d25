//! A throwaway PostgreSQL cluster for the tests that need a database:
//! `initdb` into a fresh directory, `pg_ctl start` on a free port of
//! 127.0.0.1 (and a unix socket in that directory, nowhere else), a database
//! `epilogue`, and everything stopped and removed when the [`Postgres`] is
//! dropped.
//!
//! PostgreSQL refuses to run as root, and CI runs as root: then `initdb` and
//! `pg_ctl` run as the `postgres` OS user (the child process switches user
//! itself, no `su` or `runuser` needed) in a directory that user owns. As any
//! other user they run as that user. `psql` needs no switch: it connects over
//! TCP with trust authentication.
//!
//! The binaries come from the directory `initdb` on `PATH` resolves to (its
//! symlinks followed), or else from the newest `/usr/lib/postgresql/*/bin`;
//! `psql` and `pg_ctl` are taken from that same directory, so that one
//! version does everything. `.ci/run` installs Debian's `postgresql` when
//! neither has one.

use std::env;
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::unistd::{geteuid, User};

/// How long starting (or stopping) the server may take before a test fails.
const STARTUP: Duration = Duration::from_secs(60);

/// The tools of one PostgreSQL installation, and who runs the server.
#[derive(Clone, Debug)]
struct Tools {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    psql: PathBuf,
    /// `Some((uid, gid))` of `postgres` when the tests run as root.
    run_as: Option<(u32, u32)>,
}

/// A running (or deliberately stopped) throwaway cluster. Dropping it stops
/// the server and removes its directory.
pub struct Postgres {
    dir: PathBuf,
    port: u16,
    tools: Tools,
}

impl Postgres {
    /// Creates a cluster (`initdb -A trust -U postgres -E UTF8`), starts it
    /// on a free port of 127.0.0.1, waits until it answers a query and
    /// creates the database `epilogue`.
    pub fn start() -> Postgres {
        let tools = Tools::find();
        let dir = fresh_dir(tools.run_as);
        let data = dir.join("data");
        let output = tools
            .as_server_user(&tools.initdb, &dir)
            .arg("--pgdata")
            .arg(&data)
            .args([
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--locale=C",
            ])
            .output()
            .expect("cannot run initdb");
        if !output.status.success() {
            let _ = fs::remove_dir_all(&dir);
            panic!("initdb failed ({}):\n{}", output.status, both(&output));
        }
        // The settings every start uses; the port alone is given on the
        // command line, so that a collision can be retried with another.
        let settings = format!(
            "\n# epilogue-demo tests\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{}'\n\
             fsync = on\n\
             shared_buffers = 16MB\n\
             max_connections = 100\n\
             logging_collector = off\n",
            dir.display()
        );
        let conf = data.join("postgresql.conf");
        let mut text = fs::read_to_string(&conf).expect("cannot read postgresql.conf");
        text.push_str(&settings);
        fs::write(&conf, text).expect("cannot write postgresql.conf");

        let mut postgres = Postgres {
            dir,
            port: 0,
            tools,
        };
        // Another process may take the free port between our probe and the
        // server's bind: one more try with another port.
        let mut attempt = 0;
        loop {
            attempt += 1;
            postgres.port = free_port();
            match postgres.try_start() {
                Ok(()) => break,
                Err(why) if attempt < 2 => {
                    eprintln!("postgres: start failed, retrying on another port: {why}");
                    if postgres.pid_file().exists() {
                        let _ = postgres.pg_ctl(&["stop", "-m", "immediate"]);
                    }
                }
                Err(why) => panic!("{why}"),
            }
        }
        postgres.psql_on("postgres", "create database epilogue");
        postgres
    }

    /// `postgres://postgres@127.0.0.1:PORT/epilogue`
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/epilogue", self.port)
    }

    /// The TCP port the server listens on (also while it is stopped).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's address, 127.0.0.1:PORT.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The directory holding the cluster (`data/`), its socket and its log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server (`pg_ctl stop -m fast`, waiting until it is gone),
    /// for outage tests. Does nothing when it is already stopped.
    pub fn stop(&self) {
        if !self.pid_file().exists() {
            return;
        }
        let output = self.pg_ctl(&["stop", "-m", "fast"]);
        if !output.status.success() && self.pid_file().exists() {
            panic!(
                "pg_ctl stop failed ({}):\n{}\n{}",
                output.status,
                both(&output),
                self.log_tail()
            );
        }
    }

    /// Starts the stopped server again, same port and data, and waits until
    /// it answers. Does nothing but wait when it is already running.
    pub fn restart(&self) {
        if let Err(why) = self.try_start() {
            panic!("{why}");
        }
    }

    /// Runs one SQL statement in the database `epilogue` and returns what
    /// it prints, unaligned and without headers (`psql -At`), trimmed.
    /// Panics when psql fails.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_on("epilogue", sql)
    }

    fn psql_on(&self, database: &str, sql: &str) -> String {
        let output = self.try_psql(database, sql);
        if !output.status.success() {
            panic!(
                "psql -c {sql:?} failed ({}):\n{}",
                output.status,
                both(&output)
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn try_psql(&self, database: &str, sql: &str) -> Output {
        let mut command = Command::new(&self.tools.psql);
        clear_pg_env(&mut command);
        command
            .current_dir(&self.dir)
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
            ])
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
            ])
            .arg("-c")
            .arg(sql)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run psql")
    }

    /// `pg_ctl start`, then a query answered over TCP; the error says why
    /// not, with the tail of the server's log.
    fn try_start(&self) -> Result<(), String> {
        // `pg_ctl status` exits 0 only when the server runs; a pid file a
        // crash left behind is pg_ctl start's to deal with.
        if !self.pg_ctl(&["status"]).status.success() {
            let output = self.pg_ctl(&[
                "start",
                "-l",
                &self.log().display().to_string(),
                "-o",
                &format!("-p {}", self.port),
            ]);
            if !output.status.success() {
                return Err(format!(
                    "pg_ctl start on port {} failed ({}):\n{}\n{}",
                    self.port,
                    output.status,
                    both(&output),
                    self.log_tail()
                ));
            }
        }
        let deadline = Instant::now() + STARTUP;
        loop {
            let output = self.try_psql("postgres", "select 1");
            if output.status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "postgres on port {} still not answering after {STARTUP:?}:\n{}\n{}",
                    self.port,
                    both(&output),
                    self.log_tail()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn pg_ctl(&self, args: &[&str]) -> Output {
        self.tools
            .as_server_user(&self.tools.pg_ctl, &self.dir)
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-w", "-t", &STARTUP.as_secs().to_string()])
            .args(args)
            .output()
            .expect("cannot run pg_ctl")
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("data").join("postmaster.pid")
    }

    fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!("--- tail of {}:\n{tail}", self.log().display())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.pid_file().exists() {
            let _ = self.pg_ctl(&["stop", "-m", "immediate"]);
        }
        // pg_ctl could not stop it: the postmaster's pid is the pid file's
        // first line, and SIGQUIT is an immediate shutdown.
        if let Some(pid) = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Tools {
    fn find() -> Tools {
        super::apt::ensure("postgresql", "a test with a throwaway PostgreSQL", || {
            bin_dir().is_some()
        });
        let bin = bin_dir().unwrap_or_else(|| {
            panic!(
                "no PostgreSQL server binaries (initdb, pg_ctl, postgres, psql) found on PATH \
                 or under /usr/lib/postgresql/*/bin: install Debian's `postgresql` package \
                 (apt-get install postgresql; .ci/run does it)"
            )
        });
        let run_as = geteuid().is_root().then(|| {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!(
                        "the tests run as root, which PostgreSQL refuses, and there is no \
                         `postgres` user to run it as: install Debian's `postgresql` package, \
                         which creates it"
                    )
                });
            (user.uid.as_raw(), user.gid.as_raw())
        });
        Tools {
            initdb: bin.join("initdb"),
            pg_ctl: bin.join("pg_ctl"),
            psql: bin.join("psql"),
            run_as,
        }
    }

    /// A command for `program` run as the user the server runs as, in `dir`.
    fn as_server_user(&self, program: &Path, dir: &Path) -> Command {
        let mut command = Command::new(program);
        clear_pg_env(&mut command);
        command.current_dir(dir).stdin(Stdio::null());
        if let Some((uid, gid)) = self.run_as {
            // std drops root's supplementary groups when it sets the uid.
            command.uid(uid).gid(gid);
            command
                .env("HOME", dir)
                .env("USER", "postgres")
                .env("LOGNAME", "postgres");
        }
        command
    }
}

/// The directory holding initdb, pg_ctl, postgres and psql of one version.
fn bin_dir() -> Option<PathBuf> {
    let complete = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|tool| dir.join(tool).is_file())
    };
    let on_path = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join("initdb"))
        .filter(|initdb| initdb.is_file())
        .filter_map(|initdb| fs::canonicalize(initdb).ok()?.parent().map(Path::to_owned));
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort();
    on_path
        .chain(versions.into_iter().rev().map(|(_, bin)| bin))
        .find(|dir| complete(dir))
}

/// A new empty directory for one cluster, mode 0700, owned by the server's
/// user. Kept short: the unix socket's path must fit in 107 bytes.
fn fresh_dir(run_as: Option<(u32, u32)>) -> PathBuf {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut base = env::temp_dir();
    // The server's user must be able to reach the directory; /tmp always lets it.
    if run_as.is_some() && !traversable_by_all(&base) {
        base = PathBuf::from("/tmp");
    }
    let dir = base.join(format!(
        "epilogue-pg-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    // A leftover of an earlier run that had the same process id.
    let _ = fs::remove_dir_all(&dir);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .unwrap_or_else(|error| panic!("cannot chown {} to postgres: {error}", dir.display()));
    }
    dir
}

fn traversable_by_all(dir: &Path) -> bool {
    dir.ancestors()
        .all(|dir| fs::metadata(dir).is_ok_and(|meta| meta.permissions().mode() & 0o001 != 0))
}

/// A port of 127.0.0.1 nobody listened on a moment ago.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

/// Whether something accepts TCP connections on `addr` right now.
pub fn accepts_connections(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

/// Keeps the environment of the machine (PGHOST, PGDATA…) out of the tools.
fn clear_pg_env(command: &mut Command) {
    for (key, _) in env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            command.env_remove(key);
        }
    }
}

fn both(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

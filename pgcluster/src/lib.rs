//! A private PostgreSQL cluster, started from the server binaries installed
//! on the machine. `storekeeper serve` owns one under its data directory
//! when no `DATABASE_URL` is given, and `cargo xtask test` starts a
//! throwaway one for the tests. PostgreSQL refuses to run as root, so as
//! root the server runs as the unprivileged `postgres` account.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no PostgreSQL server binaries (initdb, postgres, pg_ctl) were found via pg_config --bindir, PATH or /usr/lib/postgresql/*/bin.\n\
         Install them (Debian/Ubuntu: `apt-get install postgresql`) or point DATABASE_URL at an existing server."
    )]
    NoBinaries,
    #[error(
        "running as root, PostgreSQL must run as the `postgres` account, which does not exist here. \
         Install Debian's postgresql package (it creates the account) or set DATABASE_URL."
    )]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed: {output}")]
    Command { what: String, output: String },
    #[error("PostgreSQL did not become ready within {0:?}; see {1}")]
    NotReady(Duration, PathBuf),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// How a cluster is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Holds the cluster (`pgdata/`), its log and its password.
    pub dir: PathBuf,
    /// Durability settings on (the default). Tests turn them off for speed.
    pub durable: bool,
    pub max_connections: u32,
    /// A new cluster starts at this transaction id (`pg_resetwal -x`), as
    /// one that has run that many transactions would: for tests of what
    /// must not depend on transaction ids. At most 1,048,575 (the first
    /// commit-log segment).
    pub first_xid: Option<u32>,
}

impl Options {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Options { dir: dir.into(), durable: true, max_connections: 200, first_xid: None }
    }
}

/// A running cluster. Stopped on drop unless `detach`ed.
#[derive(Debug)]
pub struct Cluster {
    bindir: PathBuf,
    pgdata: PathBuf,
    port: u16,
    password: String,
    run_as: Option<(u32, u32)>,
    stop_on_drop: bool,
}

const SUPERUSER: &str = "storekeeper";

/// The directory holding `initdb`, `postgres` and `pg_ctl`.
pub fn find_bindir() -> Result<PathBuf, Error> {
    let has_all = |dir: &Path| ["initdb", "postgres", "pg_ctl"].iter().all(|b| dir.join(b).is_file());
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_all(&dir) {
            return Ok(dir);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_all(&dir) {
                return Ok(dir);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, dir)| has_all(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir).ok_or(Error::NoBinaries)
}

fn is_root() -> bool {
    fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0).unwrap_or(false)
}

/// uid and gid of the `postgres` account, from /etc/passwd.
fn postgres_account() -> Result<(u32, u32), Error> {
    let passwd = fs::read_to_string("/etc/passwd").map_err(io("read /etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .ok_or(Error::NoPostgresUser)
}

fn free_port() -> Result<u16, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io("find a free port"))?;
    Ok(listener.local_addr().map_err(io("find a free port"))?.port())
}

fn random_password() -> Result<String, Error> {
    let mut bytes = [0u8; 24];
    fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes)).map_err(io("read /dev/urandom"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl Cluster {
    /// Starts the cluster in `options.dir`, creating it on first use, or
    /// attaches to it if a server from an earlier run is still up.
    pub fn start(options: &Options) -> Result<Cluster, Error> {
        let bindir = find_bindir()?;
        let run_as = if is_root() { Some(postgres_account()?) } else { None };
        fs::create_dir_all(&options.dir).map_err(io(format!("create {}", options.dir.display())))?;
        let dir = options.dir.canonicalize().map_err(io(format!("resolve {}", options.dir.display())))?;
        let pgdata = dir.join("pgdata");
        let password_file = dir.join("pg-password");

        let mut cluster = Cluster { bindir, pgdata, port: 0, password: String::new(), run_as, stop_on_drop: true };
        if !cluster.pgdata.join("PG_VERSION").exists() {
            cluster.init(&dir, &password_file, options)?;
        }
        cluster.password = fs::read_to_string(&password_file).map_err(io(format!("read {}", password_file.display())))?.trim().to_owned();

        if let Some(port) = cluster.running_port() {
            tracing::info!(port, "attached to the PostgreSQL cluster already running in {}", cluster.pgdata.display());
            cluster.port = port;
            cluster.stop_on_drop = false;
            return Ok(cluster);
        }
        cluster.port = free_port()?;
        let log = dir.join("postgresql.log");
        let settings = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c max_connections={}{}",
            cluster.port,
            options.max_connections,
            if options.durable { "" } else { " -c fsync=off -c synchronous_commit=off -c full_page_writes=off" }
        );
        cluster.pg_ctl(&["start", "-w", "-t", "60", "-l", log.to_str().unwrap_or_default(), "-o", &settings])?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while cluster.running_port().is_none() {
            if Instant::now() > deadline {
                return Err(Error::NotReady(Duration::from_secs(60), log));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!(port = cluster.port, "started PostgreSQL in {}", cluster.pgdata.display());
        Ok(cluster)
    }

    fn init(&self, dir: &Path, password_file: &Path, options: &Options) -> Result<(), Error> {
        if let Some((uid, gid)) = self.run_as {
            // The server's account must reach the directory from the root.
            let mut p = dir.to_path_buf();
            loop {
                let mode = fs::metadata(&p).map_err(io(format!("inspect {}", p.display())))?.permissions().mode();
                if mode & 0o001 == 0 && p != dir {
                    return Err(Error::Command {
                        what: format!("preparing {}", dir.display()),
                        output: format!(
                            "{} is not searchable by the postgres account; choose a data directory it can reach (STOREKEEPER_DATA_DIR)",
                            p.display()
                        ),
                    });
                }
                if !p.pop() {
                    break;
                }
            }
            std::os::unix::fs::chown(dir, Some(uid), Some(gid)).map_err(io(format!("chown {}", dir.display())))?;
        }
        let password = random_password()?;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(password_file)
            .map_err(io(format!("write {}", password_file.display())))?;
        f.write_all(password.as_bytes()).map_err(io("write the password file"))?;
        drop(f);
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(password_file, Some(uid), Some(gid)).map_err(io("chown the password file"))?;
        }
        let mut cmd = self.command("initdb");
        cmd.args(["-D", self.pgdata.to_str().unwrap_or_default(), "-U", SUPERUSER, "-A", "scram-sha-256", "-E", "UTF8", "--no-locale"])
            .arg(format!("--pwfile={}", password_file.display()));
        if !options.durable {
            cmd.arg("--no-sync");
        }
        run(cmd, "initdb")?;
        if let Some(xid) = options.first_xid {
            let mut cmd = self.command("pg_resetwal");
            cmd.args(["-x", &xid.min(1_048_575).to_string(), "-D", self.pgdata.to_str().unwrap_or_default()]);
            run(cmd, "pg_resetwal")?;
            // The server reads the new id's commit-log page: a whole first
            // segment of zeros (no transaction ran below it).
            let clog = self.pgdata.join("pg_xact/0000");
            let file = fs::OpenOptions::new().write(true).open(&clog).map_err(io(format!("open {}", clog.display())))?;
            file.set_len(32 * 8192).map_err(io(format!("extend {}", clog.display())))?;
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.stdin(Stdio::null()).env("LC_ALL", "C").env_remove("PGDATA");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid).current_dir("/");
        }
        cmd
    }

    fn pg_ctl(&self, args: &[&str]) -> Result<(), Error> {
        let mut cmd = self.command("pg_ctl");
        cmd.args(["-D", self.pgdata.to_str().unwrap_or_default()]).args(args);
        run(cmd, &format!("pg_ctl {}", args.first().copied().unwrap_or_default()))
    }

    /// The port of a server that is up and ready in this cluster, if any.
    fn running_port(&self) -> Option<u16> {
        let pid_file = fs::read_to_string(self.pgdata.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = pid_file.lines().collect();
        let pid: u32 = lines.first()?.trim().parse().ok()?;
        let alive = postmaster_alive(pid, &self.pgdata);
        (alive && lines.get(7).map(|s| s.trim()) == Some("ready")).then(|| lines.get(3)?.trim().parse().ok()).flatten()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the cluster's superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://{SUPERUSER}:{}@127.0.0.1:{}/{database}", self.password, self.port)
    }

    /// Keeps the server running after this handle is dropped.
    pub fn detach(mut self) {
        self.stop_on_drop = false;
    }

    /// Stops the server (fast shutdown: sessions are ended, data is safe).
    pub fn stop(&mut self) -> Result<(), Error> {
        self.stop_on_drop = false;
        self.pg_ctl(&["stop", "-w", "-m", "fast"])
    }

    /// Stops the server within about `budget`: a fast shutdown for up to
    /// that long, then an immediate one without waiting (data stays safe:
    /// the next start replays the WAL). A server that cannot answer (frozen,
    /// its disk hung) must not hold its owner's exit.
    pub fn stop_within(&mut self, budget: std::time::Duration) -> Result<(), Error> {
        self.stop_on_drop = false;
        let seconds = budget.as_secs().max(1).to_string();
        match self.pg_ctl(&["stop", "-w", "-t", &seconds, "-m", "fast"]) {
            Ok(()) => Ok(()),
            Err(fast) => {
                let _ = self.pg_ctl(&["stop", "-W", "-m", "immediate"]);
                Err(fast)
            }
        }
    }

    /// Runs a program from the server's bin directory (e.g. `pg_test_fsync`)
    /// and returns its standard output.
    pub fn run_tool(&self, program: &str, args: &[&str]) -> Result<String, Error> {
        let mut cmd = Command::new(self.bindir.join(program));
        cmd.args(args);
        let out = cmd.output().map_err(io(format!("run {program}")))?;
        if !out.status.success() {
            return Err(Error::Command { what: program.into(), output: String::from_utf8_lossy(&out.stderr).into_owned() });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.stop_on_drop
            && let Err(e) = self.stop()
        {
            tracing::warn!("stopping PostgreSQL: {e}");
        }
    }
}

fn run(mut cmd: Command, what: &str) -> Result<(), Error> {
    let out = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).output().map_err(io(format!("run {what}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            what: what.into(),
            output: format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        })
    }
}

/// Whether `pid` is a live PostgreSQL server of the cluster in `pgdata`:
/// not gone, not a zombie left unreaped by its parent, not another program
/// that took the number, and not another cluster's server or backend (a
/// stale pid file after a reboot can name one), which runs elsewhere: the
/// server works in its data directory.
fn postmaster_alive(pid: u32, pgdata: &Path) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    // `pid (comm) state ...`: comm may hold spaces and parentheses.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { return false };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    matches!(comm, "postgres" | "postmaster") && !matches!(state, "Z" | "X" | "x") && runs_in(pid, pgdata)
}

/// Whether process `pid` works in `dir`.
fn runs_in(pid: u32, dir: &Path) -> bool {
    match (fs::read_link(format!("/proc/{pid}/cwd")), fs::canonicalize(dir)) {
        (Ok(cwd), Ok(dir)) => cwd == dir,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn a_zombie_another_program_or_another_clusters_server_is_no_server() {
        let here = std::env::current_dir().unwrap();
        // This test's own process is alive and works here, but is not
        // PostgreSQL; and it does not work in another directory.
        assert!(super::runs_in(std::process::id(), &here));
        assert!(!super::runs_in(std::process::id(), Path::new("/")));
        assert!(!super::postmaster_alive(std::process::id(), &here));
        // A zombie: a child that exited and is not reaped yet.
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        assert!(stat.contains(") Z"), "{stat}");
        assert!(!super::postmaster_alive(pid, &here));
        drop(child);
    }
}

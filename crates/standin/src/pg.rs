//! Throwaway PostgreSQL: a private cluster in a temporary directory, with the project's schema.
//!
//! Owns finding the PostgreSQL binaries on the machine, `initdb` into a fresh temp dir (as the
//! `postgres` system user when running as root, since initdb refuses root), starting the server on
//! 127.0.0.1 with a free port and logical decoding enabled, building a template database once
//! (`supabase/standalone/00_base.sql` for what Supabase provides, which also creates the gateway's
//! `chat_gateway` login role, + every file of `supabase/migrations/` + `supabase/seed.sql`), and
//! cloning it per test. Cleanup is guaranteed by a reaper process whose stdin is a pipe we hold: when this
//! process ends for any reason (panic, kill), the pipe closes and the reaper stops the server and
//! removes the directory. This module must never touch a server it did not start.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("PostgreSQL binaries not found (looked for initdb via pg_config and in /usr/lib/postgresql/*/bin); run scripts/setup")]
    NoBinaries,
    #[error("running as root, but there is no `postgres` system user to run PostgreSQL as")]
    NoPostgresUser,
    #[error("{step} failed: {detail}")]
    Command { step: &'static str, detail: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("PostgreSQL did not accept connections within {0:?}; log:\n{1}")]
    NotReady(Duration, String),
    #[error("applying {file}: {source}")]
    Sql { file: String, source: tokio_postgres::Error },
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// A running throwaway cluster. Stopped and removed on drop, or by the reaper if we die.
pub struct Cluster {
    port: u16,
    dir: PathBuf,
    server: Mutex<Option<Child>>,
    reaper: Mutex<Option<(Child, ChildStdin)>>,
    template_lock: tokio::sync::Mutex<()>,
    counter: AtomicU64,
}

/// One database of a cluster, cloned from the template (schema + seed applied).
#[derive(Clone)]
pub struct Database {
    name: String,
    port: u16,
    _cluster: Arc<Cluster>,
}

const TEMPLATE: &str = "chat_template";

fn bin_dir() -> Result<PathBuf, PgError> {
    if let Ok(dir) = std::env::var("PG_BIN_DIR") {
        let dir = PathBuf::from(dir);
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
                    let dir = e.path().join("bin");
                    dir.join("initdb").exists().then_some((version, dir))
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().map(|(_, dir)| dir).ok_or(PgError::NoBinaries)
}

/// (uid, gid) of the `postgres` user, when we are root.
fn run_as() -> Result<Option<(u32, u32)>, PgError> {
    // SAFETY-free check of our effective uid through /proc (no libc dependency).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(u32::MAX);
    if euid != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() > 3 && fields[0] == "postgres" {
            let uid = fields[2].parse().map_err(|_| PgError::NoPostgresUser)?;
            let gid = fields[3].parse().map_err(|_| PgError::NoPostgresUser)?;
            return Ok(Some((uid, gid)));
        }
    }
    Err(PgError::NoPostgresUser)
}

fn command(bin: &Path, name: &str, user: Option<(u32, u32)>) -> Command {
    let mut cmd = Command::new(bin.join(name));
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C.UTF-8");
    cmd
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

fn free_port() -> Result<u16, PgError> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn supabase_dir() -> PathBuf {
    std::env::var("STANDIN_SUPABASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../supabase")))
}

/// What Supabase provides before any migration (roles, `auth`, grants, publication): the same
/// file a plain PostgreSQL gets for the gateway's PostgreSQL backend, so the two cannot drift.
fn base_sql() -> PathBuf {
    std::env::var("STANDIN_BASE_SQL")
        .map(PathBuf::from)
        .unwrap_or_else(|_| supabase_dir().join("standalone").join("00_base.sql"))
}

/// Connects to `url`, driving the connection on the current runtime.
pub async fn connect(url: &str) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

/// A new data directory at `data`, trusting local connections.
fn initdb(bin: &Path, user: Option<(u32, u32)>, data: &Path) -> Result<(), PgError> {
    let out = command(bin, "initdb", user)
        .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "--no-instructions", "-D"])
        .arg(data)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(PgError::Command { step: "initdb", detail: String::from_utf8_lossy(&out.stderr).into_owned() });
    }
    Ok(())
}

/// Starts the server on `data` at `port` (logical decoding on, durability off), logging to
/// `dir/postgres.log`.
fn spawn_server(bin: &Path, user: Option<(u32, u32)>, data: &Path, dir: &Path, port: u16) -> Result<Child, PgError> {
    let log = std::fs::File::create(dir.join("postgres.log"))?;
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))?;
    }
    let child = command(bin, "postgres", user)
        .arg("-D")
        .arg(data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=200",
            // One walsender per gateway streaming its slot (and a moment longer after a drop);
            // initdb's pg_hba.conf already lets local `replication` connections in.
            "-c",
            "max_wal_senders=64",
            "-c",
            "max_connections=600",
            "-c",
            "fsync=off",
            // synchronous_commit stays on: logical decoding only sees flushed WAL, and
            // with it off commits would reach the change feed up to wal_writer_delay late.
            // fsync=off keeps those flushes cheap.
            "-c",
            "full_page_writes=off",
            "-c",
            "shared_buffers=64MB",
            "-c",
            "timezone=UTC",
            "-c",
            "log_min_messages=warning",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        // Its own process group: a terminal's Ctrl-C reaches us, and we stop the server
        // after everything that uses it (or the reaper does, if we die first).
        .process_group(0)
        .spawn()?;
    Ok(child)
}

static SHARED: OnceLock<Arc<Cluster>> = OnceLock::new();
static SHARED_INIT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Cluster {
    /// The process-wide cluster for tests: started on first use, removed when the process exits.
    pub async fn shared() -> Result<Arc<Cluster>, PgError> {
        if let Some(c) = SHARED.get() {
            return Ok(c.clone());
        }
        let _guard = SHARED_INIT.lock().await;
        if let Some(c) = SHARED.get() {
            return Ok(c.clone());
        }
        let cluster = Arc::new(Cluster::start().await?);
        let _ = SHARED.set(cluster.clone());
        Ok(cluster)
    }

    /// A new cluster of our own, with the template database built.
    pub async fn start() -> Result<Cluster, PgError> {
        let bin = bin_dir()?;
        let user = run_as()?;
        let dir =
            std::env::temp_dir().join(format!("chat-pg-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("data");
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        }
        // From here on the reaper owns cleanup of `dir`, whatever happens to us.
        let reaper = spawn_reaper(&dir, &bin, user)?;
        let cluster_dir = dir.clone();
        let mut cluster = Cluster {
            port: 0,
            dir: cluster_dir,
            server: Mutex::new(None),
            reaper: Mutex::new(Some(reaper)),
            template_lock: tokio::sync::Mutex::new(()),
            counter: AtomicU64::new(0),
        };
        initdb(&bin, user, &data)?;
        let mut last_error = String::new();
        for _attempt in 0..5 {
            let port = free_port()?;
            let child = spawn_server(&bin, user, &data, &dir, port)?;
            *cluster.server.lock().map_err(|_| PgError::Command { step: "start", detail: "lock".into() })? =
                Some(child);
            cluster.port = port;
            match cluster.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => {
                    cluster.build_template().await?;
                    tracing::info!(port, dir = %dir.display(), "throwaway PostgreSQL ready");
                    return Ok(cluster);
                }
                Err(e) => {
                    last_error = e.to_string();
                    cluster.stop_server();
                }
            }
        }
        Err(PgError::Command { step: "postgres", detail: last_error })
    }

    async fn wait_ready(&self, limit: Duration) -> Result<(), PgError> {
        let started = Instant::now();
        loop {
            if let Ok(client) = connect(&self.url("postgres")).await {
                // Make sure it is ours: another server may have taken the port between our probe
                // and postgres binding it.
                let ours = client
                    .query_one("select current_setting('data_directory')", &[])
                    .await
                    .ok()
                    .and_then(|row| row.try_get::<_, String>(0).ok())
                    .is_some_and(|d| same_path(Path::new(&d), &self.dir.join("data")));
                if ours {
                    return Ok(());
                }
                return Err(PgError::Command {
                    step: "postgres",
                    detail: format!("port {} is served by another PostgreSQL", self.port),
                });
            }
            let exited = self
                .server
                .lock()
                .ok()
                .and_then(|mut s| s.as_mut().map(|c| c.try_wait().ok().flatten().is_some()))
                .unwrap_or(true);
            if exited || started.elapsed() > limit {
                let log = std::fs::read_to_string(self.dir.join("postgres.log")).unwrap_or_default();
                return Err(PgError::NotReady(limit, log));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn build_template(&self) -> Result<(), PgError> {
        let admin = connect(&self.url("postgres")).await?;
        admin.batch_execute(&format!("create database {TEMPLATE}")).await?;
        let db = connect(&self.url(TEMPLATE)).await?;
        let mut files = vec![base_sql()];
        let migrations = supabase_dir().join("migrations");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&migrations)
            .map_err(|e| PgError::Command {
                step: "reading supabase/migrations",
                detail: format!("{}: {e}", migrations.display()),
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        names.sort();
        files.extend(names);
        files.push(supabase_dir().join("seed.sql"));
        for file in files {
            let sql = std::fs::read_to_string(&file)
                .map_err(|e| PgError::Command { step: "reading SQL", detail: format!("{}: {e}", file.display()) })?;
            db.batch_execute(&sql).await.map_err(|source| PgError::Sql { file: file.display().to_string(), source })?;
        }
        drop(db);
        Ok(())
    }

    /// A fresh database cloned from the template: schema, RLS, functions, publication and seed.
    pub async fn create_database(self: &Arc<Self>) -> Result<Database, PgError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("chat_{}_{n}", std::process::id());
        {
            // CREATE DATABASE ... TEMPLATE needs the template free of other connections.
            let _one_at_a_time = self.template_lock.lock().await;
            let admin = connect(&self.url("postgres")).await?;
            admin.batch_execute(&format!("create database {name} template {TEMPLATE}")).await?;
        }
        Ok(Database { name, port: self.port, _cluster: self.clone() })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Superuser connection string of a database of this cluster.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn stop_server(&self) {
        if let Ok(mut guard) = self.server.lock() {
            if let Some(mut child) = guard.take() {
                // SIGINT = fast shutdown; then make sure.
                let _ = Command::new("kill").arg("-INT").arg(child.id().to_string()).status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    if child.try_wait().ok().flatten().is_some() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_server();
        if let Ok(mut guard) = self.reaper.lock() {
            if let Some((mut child, stdin)) = guard.take() {
                drop(stdin); // EOF: the reaper removes the directory and exits.
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A shell that waits for EOF on stdin, then stops the server of `dir` and removes `dir`.
fn spawn_reaper(dir: &Path, bin: &Path, user: Option<(u32, u32)>) -> Result<(Child, ChildStdin), PgError> {
    let script = r#"
read -r _ignored
pid=$(head -n 1 "$1/data/postmaster.pid" 2>/dev/null)
if [ -n "$pid" ]; then
  kill -INT "$pid" 2>/dev/null
  i=0
  # postgres removes postmaster.pid at the end of its shutdown; `kill -0` alone would also
  # succeed on its zombie when nobody reaps it (our process, its parent, is gone).
  while [ -f "$1/data/postmaster.pid" ] && kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done
  [ -f "$1/data/postmaster.pid" ] && kill -KILL "$pid" 2>/dev/null
fi
rm -rf "$1"
"#;
    let _ = (bin, user);
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("reaper")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or(PgError::Command { step: "reaper", detail: "no stdin".into() })?;
    // Nothing is ever written: only EOF matters. A zero-length write checks the pipe is open.
    stdin.write_all(b"")?;
    Ok((child, stdin))
}

impl Database {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Superuser connection string.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{}", self.port, self.name)
    }

    /// A superuser connection, driven on the current runtime.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        connect(&self.url()).await
    }
}

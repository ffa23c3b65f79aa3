//! PostgreSQL for the tests: a fresh schema per test, clean-up from a `Drop`, a forwarder that
//! can be cut, a private server that can be restarted.

use super::*;

/// The PostgreSQL database of the tests: `PAYROUTE_TEST_PG_URL`, by default
/// `postgres://postgres@127.0.0.1:5432/test`.
pub fn pg_url() -> String {
    std::env::var("PAYROUTE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh schema name in the test database, dropped when this is dropped (also when the
/// test panics).
pub struct PgSchema {
    pub name: String,
    pub url: String,
}

impl PgSchema {
    /// `None` when PostgreSQL is not reachable (said loudly on stderr); a panic instead
    /// when `PAYROUTE_REQUIRE_PG=1`.
    pub async fn create(prefix: &str) -> Option<PgSchema> {
        use std::io::Write;
        let url = pg_url();
        let reached = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await;
        let error = match reached {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }),
            Err(_) => Some("no answer within 5s".to_string()),
        };
        if let Some(error) = error {
            if std::env::var("PAYROUTE_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("PostgreSQL not reachable ({error}) and PAYROUTE_REQUIRE_PG=1");
            }
            // Past the harness's capture of `eprintln!`: this must be seen.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: PostgreSQL not reachable ({error}); run with PAYROUTE_REQUIRE_PG=1 \
                 (and PAYROUTE_TEST_PG_URL=postgres://…) to run the PostgreSQL end-to-end tests ***\n"
            );
            return None;
        }
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!(
            "{prefix}{}_{nanos}_{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        Some(PgSchema { name, url })
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        execute_detached(
            &self.url,
            &format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.name),
        );
    }
}

/// Runs `sql` on the PostgreSQL at `url` and waits for it, from a `Drop` (clean-up of a schema
/// or a role): Drop may run inside a runtime or while unwinding, so the statement gets a thread
/// and a runtime of its own. Errors are ignored — clean-up is best effort.
pub fn execute_detached(url: &str, sql: &str) {
    let (url, sql) = (url.to_string(), sql.to_string());
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

/// A TCP forwarder to the test PostgreSQL that can be cut (every connection dropped, the port
/// refusing) and restored: what a database restart looks like to the proxy, without
/// restarting the database other tests share.
pub struct PgForwarder {
    pub port: u16,
    target: String,
    tasks: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl PgForwarder {
    pub async fn start() -> Arc<PgForwarder> {
        let config: tokio_postgres::Config = pg_url().parse().expect("PAYROUTE_TEST_PG_URL");
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            _ => "127.0.0.1".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let f = Arc::new(PgForwarder {
            port: listener.local_addr().unwrap().port(),
            target: format!("{host}:{port}"),
            tasks: std::sync::Mutex::new(Vec::new()),
        });
        f.serve(listener);
        f
    }

    /// `url` with its host and port replaced by this forwarder's.
    pub fn url(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
        let at = rest.find('@').map_or(0, |i| i + 1);
        let end = rest[at..].find(['/', '?']).map_or(rest.len(), |i| at + i);
        format!(
            "{scheme}://{}127.0.0.1:{}{}",
            &rest[..at],
            self.port,
            &rest[end..]
        )
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let me = self.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let target = me.target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                me.tasks.lock().unwrap().push(conn.abort_handle());
            }
        });
        self.tasks.lock().unwrap().push(accept.abort_handle());
    }

    /// Drops every connection and stops listening.
    pub fn cut(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restore(self: &Arc<Self>) {
        let addr = format!("127.0.0.1:{}", self.port);
        let listener = within("the forwarder's port to be free", async {
            loop {
                match TcpListener::bind(&addr).await {
                    Ok(l) => break l,
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        })
        .await;
        self.serve(listener);
    }
}

/// A PostgreSQL server of the test's own (initdb in a temp dir, on a free port), so that the
/// test may stop and start it without touching the database other tests share. Run as the
/// `postgres` user when the tests run as root (PostgreSQL refuses root).
pub struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Run the server's commands through `runuser -u postgres`.
    as_postgres: bool,
}

impl PrivatePg {
    /// `None` (said loudly) when this machine has no PostgreSQL server binaries to run; a
    /// panic instead when `PAYROUTE_REQUIRE_PG=1`.
    pub fn start() -> Option<PrivatePg> {
        use std::io::Write;
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .filter(|b| b.join("initdb").exists() && b.join("pg_ctl").exists())
                .max()
        });
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let Some(bin) = bin else {
            if std::env::var("PAYROUTE_REQUIRE_PG").as_deref() == Ok("1") {
                panic!("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin and PAYROUTE_REQUIRE_PG=1");
            }
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb) to run a \
                 private server for the restart test ***\n"
            );
            return None;
        };
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let pg = PrivatePg {
            dir,
            bin,
            port,
            as_postgres: root,
        };
        if root {
            let ok = std::process::Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(pg.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the private PostgreSQL's directory to postgres");
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ],
        );
        pg.start_server();
        Some(pg)
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// One of the server's programs, as the user that may run it.
    fn command(&self, tool: &str) -> std::process::Command {
        let tool = self.bin.join(tool);
        if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(tool);
            c
        } else {
            std::process::Command::new(tool)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The url of database `postgres` on this server.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server and waits until it accepts connections (`pg_ctl -w`, 30s at most).
    pub fn start_server(&self) {
        let data = self.data();
        let log = self.dir.path().join("server.log").display().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "30", "start",
            ],
        );
    }

    /// Stops the server as an operator restarting it would (`-m fast`: sessions are ended,
    /// open transactions rolled back, the committed ones kept).
    pub fn stop_server(&self) {
        let data = self.data();
        self.run(
            "pg_ctl",
            &["-D", &data, "-m", "fast", "-w", "-t", "30", "stop"],
        );
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .command("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

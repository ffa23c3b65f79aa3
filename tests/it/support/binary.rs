//! The real `payroute` binary as a child process, in place of the in-process proxy.

use super::*;

/// The real `payroute` binary in place of the harness's in-process proxy: the same config and
/// database, the same API port (the providers' notify_url), its own admin port.
pub struct Binary {
    child: std::process::Child,
    config: PathBuf,
    admin: String,
    /// Its stderr (the log), across restarts.
    log: PathBuf,
}

impl Binary {
    /// Stops `h`'s in-process proxy and starts the binary; `h.admin` then points at it.
    pub async fn take_over(h: &mut Harness) -> Binary {
        let api_port = h
            .site
            .public_base_url
            .rsplit(':')
            .next()
            .unwrap()
            .to_string();
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let yaml = std::fs::read_to_string(&h.config_path)
            .unwrap()
            .replacen(
                "listen: 127.0.0.1:0",
                &format!("listen: 127.0.0.1:{api_port}"),
                1,
            )
            .replacen(
                "admin_listen: 127.0.0.1:0",
                &format!("admin_listen: 127.0.0.1:{admin_port}"),
                1,
            );
        let config = h.dir.path().join("binary.yaml");
        std::fs::write(&config, yaml).unwrap();
        if let Some(r) = h.running.take() {
            within("the in-process proxy to stop", r.shutdown()).await;
        }
        h.admin = format!("http://127.0.0.1:{admin_port}");
        let admin = format!("127.0.0.1:{admin_port}");
        let log = h.dir.path().join("binary.log");
        let child = Binary::spawn(&config, &admin, &log).await;
        Binary {
            child,
            config,
            admin,
            log,
        }
    }

    async fn spawn(config: &Path, admin: &str, log: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_payroute"))
            .args(["serve", "--config"])
            .arg(config)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        wait_until("the binary serves", || async {
            tokio::net::TcpStream::connect(admin).await.is_ok()
        })
        .await;
        child
    }

    /// Starts the binary again after it stopped.
    pub async fn restart(&mut self) {
        self.child = Binary::spawn(&self.config, &self.admin, &self.log).await;
    }

    /// Everything the binary logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (`TERM`, `KILL`) to the binary.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }

    /// Waits for the binary to exit; whether it exited on its own with success.
    pub async fn exited(&mut self) -> bool {
        within("the binary to exit", async {
            loop {
                if let Some(status) = self.child.try_wait().unwrap() {
                    break status.success();
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

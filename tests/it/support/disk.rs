//! A small disk to fill: the store's writes fail while its reads work.

use std::path::{Path, PathBuf};

use super::Harness;

/// A small tmpfs at `dir`, unmounted on drop.
pub struct SmallDisk(pub PathBuf);

impl SmallDisk {
    /// `None` (and a loud note) where this machine cannot mount one: mounting needs root.
    /// With `PAYROUTE_REQUIRE_ROOT=1` (as `.ci/run` sets: CI runs as root) it fails the test
    /// instead, so that a full-disk test never passes in CI without having run.
    pub fn mount(dir: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            assert!(
                std::env::var("PAYROUTE_REQUIRE_ROOT").as_deref() != Ok("1"),
                "cannot mount a tmpfs at {} and PAYROUTE_REQUIRE_ROOT=1: the full-disk test must run",
                dir.display()
            );
            // Past the harness's capture of `eprintln!`: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED: cannot mount a tmpfs at {} (needs root); the full-disk test did \
                 not run; PAYROUTE_REQUIRE_ROOT=1 makes it fail instead ***\n",
                dir.display()
            );
            return None;
        }
        Some(SmallDisk(dir.to_path_buf()))
    }

    /// Takes all the space that is left, in a file that [`SmallDisk::free`] removes.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }

    /// Moves `h`'s SQLite store onto this disk (a fresh, empty file) and restarts the proxy.
    pub async fn move_store(&self, h: &mut Harness) {
        let db = self.0.join("payroute.db");
        let yaml = std::fs::read_to_string(&h.config_path).unwrap().replace(
            &format!("path: {}", h.db_path().display()),
            &format!("path: {}", db.display()),
        );
        super::write_atomically(&h.config_path, &yaml);
        h.restart().await;
    }

    pub fn free(&self) {
        std::fs::remove_file(self.0.join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

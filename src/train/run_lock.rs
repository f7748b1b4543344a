//! A run folder belongs to one process at a time. Training takes `<run>/.lock` (created
//! exclusively, holding the owner's pid and host) before it writes anything there, and removes it
//! when it ends. A second process is refused, naming the holder; a lock left by a process that
//! no longer exists on this host (killed with SIGKILL, a crash) is taken over.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::util::error::{Error, Result};

pub const LOCK_FILE: &str = ".lock";

/// Run folders locked by this process (a pid alone cannot tell two runs of one process apart).
static HELD: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

fn held() -> std::sync::MutexGuard<'static, BTreeSet<PathBuf>> {
    HELD.lock().unwrap_or_else(|e| e.into_inner())
}

/// This machine's name, as the lock records it.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown-host".into())
}

/// Whether process `pid` exists on this host (where `/proc` cannot tell, it is assumed to).
fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    !proc.exists() || proc.join(pid.to_string()).exists()
}

/// The exclusive right to write into one run folder; released when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    dir: PathBuf,
}

impl RunLock {
    /// Takes the lock of `run_dir` (which must exist), or says who holds it.
    pub fn acquire(run_dir: &Path) -> Result<Self> {
        let dir = run_dir.canonicalize().map_err(|e| Error::io(run_dir, e))?;
        let path = dir.join(LOCK_FILE);
        let (me, here) = (std::process::id(), host());
        for _ in 0..3 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(format!("{me} {here}\n").as_bytes()).and_then(|_| f.sync_all()).map_err(|e| Error::io(&path, e))?;
                    held().insert(dir.clone());
                    return Ok(Self { path, dir });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut parts = text.split_whitespace();
                    let pid: Option<u32> = parts.next().and_then(|p| p.parse().ok());
                    let owner = parts.next().unwrap_or("").to_string();
                    let ours = held().contains(&dir);
                    let stale = match pid {
                        // A half-written lock: its writer died between creating and filling it.
                        None => true,
                        Some(pid) if owner == here => (pid == me && !ours) || (pid != me && !alive(pid)),
                        Some(_) => false,
                    };
                    if !stale {
                        let who = pid.map_or("another process".to_string(), |p| format!("process {p} on {owner}"));
                        return Err(Error::file(
                            run_dir,
                            format!("the run folder is in use by {who} (lock {}); wait for it to finish, or remove the lock if that process is gone", path.display()),
                        ));
                    }
                    std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::file(&path, "could not take the lock: it keeps being recreated"))
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        held().remove(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("qformer-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let d = dir("second");
        let first = RunLock::acquire(&d).unwrap();
        let e = RunLock::acquire(&d).unwrap_err().to_string();
        assert!(e.contains(&format!("process {}", std::process::id())) && e.contains(&host()), "{e}");
        drop(first);
        assert!(!d.join(LOCK_FILE).exists());
        RunLock::acquire(&d).unwrap();
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_taken_over() {
        let d = dir("stale");
        // A pid that does not exist, a half-written (empty) lock, and this process's own pid
        // left over without this process holding the folder.
        for stale in [format!("{} {}\n", u32::MAX - 1, host()), String::new(), format!("{} {}\n", std::process::id(), host())] {
            std::fs::write(d.join(LOCK_FILE), &stale).unwrap();
            let lock = RunLock::acquire(&d).unwrap_or_else(|e| panic!("{stale:?}: {e}"));
            assert!(std::fs::read_to_string(lock.path()).unwrap().starts_with(&std::process::id().to_string()));
        }
        // Another host's lock cannot be checked from here: it is respected.
        std::fs::write(d.join(LOCK_FILE), "42 some-other-host\n").unwrap();
        assert!(RunLock::acquire(&d).unwrap_err().to_string().contains("process 42 on some-other-host"));
    }
}

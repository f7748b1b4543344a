//! A run's folder as the writing node holds it: locked for the run's lifetime, cleared of partial
//! writes an interrupted run left, and a previous run in it either refused or, with
//! `--overwrite`, replaced — only once the new run has passed every check of its start. A start
//! that fails before that leaves the disk as it found it: folders it created are removed again.

use std::path::{Path, PathBuf};

use super::checkpoint;
use super::run_lock::RunLock;
use crate::util::error::{Error, Result};
use crate::util::report::Reporter;

pub struct RunFolder {
    pub dir: PathBuf,
    /// What a previous run left that this fresh run replaces (`--overwrite`), named.
    previous: Vec<String>,
    /// Folders `claim` created, deepest first, until the start succeeds ([`RunFolder::started`]).
    created: Vec<PathBuf>,
    /// Held until the run ends: no other process writes into the folder.
    lock: Option<RunLock>,
}

/// `dir` and those of its ancestors that do not exist yet, deepest first.
fn missing(dir: &Path) -> Vec<PathBuf> {
    dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).map(Path::to_path_buf).collect()
}

impl RunFolder {
    /// Creates and locks `dir`, removes partial writes, and checks what a previous run left:
    /// resuming continues it; a fresh start is refused unless `overwrite`.
    pub fn claim(dir: &Path, resume: bool, overwrite: bool, reporter: &dyn Reporter) -> Result<Self> {
        let created = missing(dir);
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut folder = Self { dir: dir.to_path_buf(), previous: Vec::new(), created, lock: None };
        folder.lock = Some(RunLock::acquire(dir)?);
        let stale = checkpoint::clean_stale(dir)?;
        if stale > 0 {
            reporter.note(&format!("removed {stale} partial checkpoint write(s) left by an interrupted run"));
        }
        folder.previous = if resume { Vec::new() } else { checkpoint::run_contents(dir)? };
        if !folder.previous.is_empty() && !overwrite {
            return Err(Error::file(
                dir,
                format!("holds a run ({}): continue it with --resume latest, or replace it with --overwrite", folder.previous.join(", ")),
            ));
        }
        Ok(folder)
    }

    /// The start has succeeded and written into the folder: it stays whatever happens next.
    pub fn started(&mut self) {
        self.created.clear();
    }

    /// Removes the previous run that [`RunFolder::claim`] found (if any), for a start that has
    /// passed its checks.
    pub fn replace_previous(&mut self, reporter: &dyn Reporter) -> Result<()> {
        if self.previous.is_empty() {
            return Ok(());
        }
        checkpoint::clear_run(&self.dir)?;
        reporter.note(&format!("--overwrite: removed the previous run in {} ({})", self.dir.display(), self.previous.join(", ")));
        self.previous.clear();
        Ok(())
    }
}

impl Drop for RunFolder {
    /// A start that failed removes the (empty) folders it created; `remove_dir` leaves any folder
    /// that something else has written into.
    fn drop(&mut self) {
        drop(self.lock.take());
        for dir in &self.created {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

//! A run's folder as the writing node holds it: locked for the run's lifetime, cleared of partial
//! writes an interrupted run left, and a previous run in it either refused or, with
//! `--overwrite`, replaced — only once the new run has passed every check of its start.

use std::path::{Path, PathBuf};

use super::checkpoint;
use super::run_lock::RunLock;
use crate::util::error::{Error, Result};
use crate::util::report::Reporter;

pub struct RunFolder {
    pub dir: PathBuf,
    /// What a previous run left that this fresh run replaces (`--overwrite`), named.
    previous: Vec<String>,
    /// Held until the run ends: no other process writes into the folder.
    _lock: RunLock,
}

impl RunFolder {
    /// Creates and locks `dir`, removes partial writes, and checks what a previous run left:
    /// resuming continues it; a fresh start is refused unless `overwrite`.
    pub fn claim(dir: &Path, resume: bool, overwrite: bool, reporter: &dyn Reporter) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let lock = RunLock::acquire(dir)?;
        let stale = checkpoint::clean_stale(dir)?;
        if stale > 0 {
            reporter.note(&format!("removed {stale} partial checkpoint write(s) left by an interrupted run"));
        }
        let previous = if resume { Vec::new() } else { checkpoint::run_contents(dir)? };
        if !previous.is_empty() && !overwrite {
            return Err(Error::file(
                dir,
                format!("holds a run ({}): continue it with --resume latest, or replace it with --overwrite", previous.join(", ")),
            ));
        }
        Ok(Self { dir: dir.to_path_buf(), previous, _lock: lock })
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

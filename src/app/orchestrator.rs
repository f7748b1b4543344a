//! `qformer orchestrator`: burn-collective's global orchestrator, where the nodes of a
//! multi-machine run meet. It only introduces the nodes to each other (tensors travel between the
//! nodes directly); it holds one run's registrations, so it is started with the run and restarted
//! with it after a failure.

use crate::util::error::{Error, Result};

/// Serves on `port` until the process receives Ctrl-C or SIGTERM.
pub fn serve(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::peer("orchestrator", format!("cannot start its runtime: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

//! `qformer orchestrator`: burn-collective's global orchestrator, where the nodes of a
//! multi-machine run meet. It only introduces the nodes to each other (tensors travel between the
//! nodes directly); it holds one run's registrations, so it is started with the run and restarted
//! with it after a failure.

use std::process::ExitCode;

use crate::util::error::{Error, Result};

#[derive(clap::Args)]
pub struct OrchestratorArgs {
    /// Port to listen on.
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
}

pub fn run(args: OrchestratorArgs) -> Result<ExitCode> {
    eprintln!("orchestrator listening on port {}; Ctrl-C stops it", args.port);
    serve(args.port)?;
    Ok(ExitCode::SUCCESS)
}

/// Serves on `port` until the process receives Ctrl-C or SIGTERM.
pub fn serve(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::peer("orchestrator", format!("cannot start its runtime: {e}")))?;
    runtime.block_on(burn_collective::start_global_orchestrator(port));
    Ok(())
}

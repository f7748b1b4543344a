//! What a person at the console sees: an indicatif bar on a terminal, plain lines every
//! `log.every` steps otherwise (CI, nohup); notes from the library as lines of their own.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::train::metrics::{Progress, StepMetrics};
use crate::util::report::Reporter;

/// Library logging (burn's collective, wgpu) goes to stderr through one filter: warnings and
/// errors unless `RUST_LOG` says otherwise, coloured only on a terminal. Installed first, so that
/// the INFO-level logger burn-communication installs when none exists never is.
pub fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{fmt, EnvFilter, Layer};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let layer = fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_filter(filter);
    // An error means a logger is in place already (a library caller's): keep it.
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

pub struct Console {
    bar: Mutex<Option<ProgressBar>>,
    /// Steps between plain progress lines when stderr is not a terminal.
    every: u64,
}

impl Console {
    pub fn new(every: u64) -> Self {
        Self { bar: Mutex::new(None), every: every.max(1) }
    }

    fn bar(&self) -> Option<ProgressBar> {
        self.bar.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Reporter for Console {
    fn note(&self, text: &str) {
        match self.bar() {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }
}

impl Progress for Console {
    fn start(&self, step: u64, total: u64) {
        if !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::new(total);
        bar.set_style(ProgressStyle::with_template("{bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}").expect("template"));
        bar.set_position(step);
        *self.bar.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar);
    }

    fn step(&self, m: &StepMetrics, total: u64) {
        match self.bar() {
            Some(bar) => {
                bar.set_position(m.step);
                bar.set_message(m.summary());
            }
            None if m.step.is_multiple_of(self.every) || m.step == total => eprintln!("step {}/{total} {}", m.step, m.summary()),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish();
        }
    }
}

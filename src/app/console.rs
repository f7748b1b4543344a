//! What a person at the console sees: an indicatif bar on a terminal, plain lines every
//! `log.every` steps otherwise (CI, nohup); notes from the library as lines of their own.

use std::io::IsTerminal;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressStyle};

use crate::train::metrics::{Progress, StepMetrics};
use crate::util::report::Reporter;

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

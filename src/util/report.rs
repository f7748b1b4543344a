//! How library code tells the person running it what happened (a skipped record, a resumed run, a
//! checkpoint written): through a [`Reporter`] the application passes in. No layer below the
//! application prints; the application decides between a progress bar, plain lines or silence.

/// Receives what a running job has to say.
pub trait Reporter: Send + Sync {
    /// A line worth showing on its own.
    fn note(&self, text: &str);
}

/// Says nothing: for library callers and tests that only want the result.
pub struct Silent;

impl Reporter for Silent {
    fn note(&self, _: &str) {}
}

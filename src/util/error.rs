//! Library error type: every failure names the file, key or tensor it concerns.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing, malformed or out of range.
    #[error("{key}: {message} ({source_name})")]
    Config { key: String, message: String, source_name: String },
    /// A weights or batch file could not be read or does not fit the model.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// An input tensor has the wrong shape or content.
    #[error("{name}: {message}")]
    Input { name: String, message: String },
    #[error("{path}: {cause}")]
    Io { path: PathBuf, cause: std::io::Error },
    /// A peer of a data-parallel run failed, stopped answering, or could not be reached.
    #[error("{peer}: {message}")]
    Peer { peer: String, message: String },
}

impl Error {
    pub fn config(key: impl Into<String>, message: impl Into<String>, source_name: impl Into<String>) -> Self {
        Error::Config { key: key.into(), message: message.into(), source_name: source_name.into() }
    }
    pub fn file(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::File { path: path.into(), message: message.into() }
    }
    pub fn input(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Input { name: name.into(), message: message.into() }
    }
    pub fn peer(peer: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Peer { peer: peer.into(), message: message.into() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), cause: source }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

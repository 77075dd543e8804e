//! Errors: each names the byte offset, the item (key, tensor, header field) and the rule
//! that was broken, so a user can tell a truncated download from a corrupt or hostile file.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    // The I/O error is part of the message rather than a `#[source]`: these are shown as
    // one line, and a chain would repeat it.
    #[error("cannot open {path}: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot memory-map {path}: {error}")]
    Map {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("not a GGUF file: it starts with {found:?}, not \"GGUF\"")]
    Magic { found: String },
    #[error("GGUF version {0} is not supported (Spillway reads versions 2 and 3)")]
    Version(u32),
    #[error("big-endian GGUF files are not supported")]
    BigEndian,
    #[error("truncated file: {what} at byte {offset} needs {need} bytes, only {have} remain")]
    Truncated {
        offset: u64,
        what: String,
        need: u64,
        have: u64,
    },
    #[error("{what} at byte {offset}: {problem}")]
    Invalid {
        offset: u64,
        what: String,
        problem: String,
    },
    #[error("tensor {name:?}: {problem}")]
    Tensor { name: String, problem: String },
    #[error("no tensor named {0:?}")]
    NoTensor(String),
    #[error("tensor {name:?}: {source}")]
    Format {
        name: String,
        #[source]
        source: spillway_kernels::formats::FormatError,
    },
    #[error("writing GGUF: {0}")]
    Write(String),
    #[error("I/O error writing GGUF: {0}")]
    Io(#[from] std::io::Error),
}

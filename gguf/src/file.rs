//! GGUF files read through a memory mapping: the weights are never copied, the kernel pages
//! them in on demand, and `madvise`/`mlock` tell it how.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::{Gguf, GgufError};

/// A read-only memory mapping of a whole file.
#[derive(Debug)]
pub struct Mapping {
    map: memmap2::Mmap,
    path: PathBuf,
}

impl Mapping {
    /// Maps `file` (opened from `path`) read-only.
    ///
    /// # Safety
    ///
    /// The returned bytes are only valid while nobody changes the file. If another process
    /// truncates it while it is mapped, touching the lost pages raises SIGBUS and kills the
    /// process; if one writes to it in place, the "immutable" bytes change underneath the
    /// parser's validation. The caller must make sure the file is not modified while the
    /// mapping lives. (Replacing it by renaming a new file over it is fine: the mapping keeps
    /// the old inode.)
    pub unsafe fn new(file: &File, path: &Path) -> Result<Mapping, GgufError> {
        // SAFETY: the caller guarantees the file is not modified while mapped (see above).
        let map = unsafe { memmap2::Mmap::map(file) }.map_err(|error| GgufError::Map {
            path: path.to_owned(),
            error,
        })?;
        Ok(Mapping {
            map,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRef<[u8]> for Mapping {
    fn as_ref(&self) -> &[u8] {
        &self.map
    }
}

/// How the kernel should expect the mapping to be read (`madvise`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// Front to back, once (loading, checksumming): aggressive read-ahead.
    Sequential,
    /// Will be needed soon: start reading it in now (prefetch).
    WillNeed,
    /// Random access (inference touches each layer in turn): no read-ahead.
    Random,
    /// The kernel's default.
    Normal,
}

/// A GGUF file, memory-mapped and validated.
pub type GgufFile = Gguf<Mapping>;

impl Gguf<Mapping> {
    /// Opens, maps and validates the GGUF file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|error| GgufError::Open {
            path: path.to_owned(),
            error,
        })?;
        // SAFETY: model files are installed read-only and Spillway never writes them; the
        // systemd unit mounts the model directory read-only, and model updates replace the
        // file by rename, which leaves this mapping's inode intact. What remains (someone
        // truncating the file in place while the daemon runs) is documented in the README as
        // unsupported.
        let mapping = unsafe { Mapping::new(&file, path) }?;
        Gguf::parse(mapping)
    }

    /// Path of the mapped file.
    pub fn path(&self) -> &Path {
        self.inner().path()
    }

    /// Advises the kernel about the whole mapping.
    pub fn advise(&self, advice: Advice) -> std::io::Result<()> {
        self.inner().map.advise(to_memmap(advice))
    }

    /// Locks the whole mapping in RAM (`mlock`), so the weights can never be paged out.
    /// Needs `RLIMIT_MEMLOCK` (systemd's `LimitMEMLOCK=`) at least the file's size.
    pub fn lock(&self) -> std::io::Result<()> {
        self.inner().map.lock()
    }
}

fn to_memmap(a: Advice) -> memmap2::Advice {
    match a {
        Advice::Sequential => memmap2::Advice::Sequential,
        Advice::WillNeed => memmap2::Advice::WillNeed,
        Advice::Random => memmap2::Advice::Random,
        Advice::Normal => memmap2::Advice::Normal,
    }
}

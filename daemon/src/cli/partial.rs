//! Files written under a temporary `.partial` name and renamed into place when complete, so
//! that a reader never sees half a model. The `.partial` file is removed when the writer
//! fails, panics, or the command is interrupted (Ctrl-C, SIGTERM): a long `synth` stopped
//! half-way leaves nothing behind.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

use anyhow::Context;

/// Every `.partial` file of this process not yet renamed or removed.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A file being written as `FINAL.partial`.
pub(crate) struct PartialFile {
    partial: PathBuf,
    target: PathBuf,
    done: bool,
}

impl PartialFile {
    /// Creates `target.partial` (truncating a leftover one) and arranges its removal if the
    /// process is interrupted before [`PartialFile::commit`].
    pub(crate) fn create(target: &Path) -> anyhow::Result<(PartialFile, std::fs::File)> {
        remove_on_interrupt();
        let mut name = target.as_os_str().to_owned();
        name.push(".partial");
        let partial = PathBuf::from(name);
        let file = std::fs::File::create(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        lock_pending().push(partial.clone());
        Ok((
            PartialFile {
                partial,
                target: target.to_owned(),
                done: false,
            },
            file,
        ))
    }

    /// Renames the finished file into place.
    pub(crate) fn commit(mut self) -> anyhow::Result<()> {
        std::fs::rename(&self.partial, &self.target).with_context(|| {
            format!(
                "cannot rename {} to {}",
                self.partial.display(),
                self.target.display()
            )
        })?;
        self.done = true;
        forget(&self.partial);
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.partial);
            forget(&self.partial);
        }
    }
}

fn lock_pending() -> std::sync::MutexGuard<'static, Vec<PathBuf>> {
    // A panic while holding the lock leaves a plain list behind: still usable.
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget(path: &Path) {
    lock_pending().retain(|p| p != path);
}

/// On the first Ctrl-C or SIGTERM, removes every pending `.partial` file and exits with
/// the shell's code for a signal (128 + its number). Installed once, on first use.
fn remove_on_interrupt() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let watcher = std::thread::Builder::new()
            .name("partial-cleanup".into())
            .spawn(|| {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                else {
                    return;
                };
                let code = runtime.block_on(async {
                    use tokio::signal::unix::{SignalKind, signal};
                    let (Ok(mut int), Ok(mut term)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return None;
                    };
                    tokio::select! {
                        _ = int.recv() => Some(128 + libc::SIGINT),
                        _ = term.recv() => Some(128 + libc::SIGTERM),
                    }
                });
                if let Some(code) = code {
                    for path in lock_pending().drain(..) {
                        let _ = std::fs::remove_file(&path);
                        eprintln!("\ninterrupted: removed {}", path.display());
                    }
                    std::process::exit(code);
                }
            });
        if let Err(e) = watcher {
            tracing::warn!(
                "cannot watch for Ctrl-C ({e}); an interrupted write leaves its .partial file"
            );
        }
    });
}

//! Bounded, non-blocking reads of small text files under `/sys` and `/proc`, and bounded
//! directory listings, plus the memory readings ([`memory`]) that both the resource monitor
//! and board detection need. Everything either of them reads from the machine goes through
//! here, so no file's contents or size can make it allocate without limit or hang. This
//! module knows nothing of boards or sampling: it only reads.
//!
//! Kernel attribute files are tiny (a number, a line or two; `/proc/meminfo` is ~1.5 KiB),
//! so anything past `MAX_FILE_BYTES` (64 KiB) is not what we think it is and is refused rather than
//! truncated: a truncated number would parse as a different, wrong number.

pub mod memory;

use std::fs::OpenOptions;
use std::io::{ErrorKind, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The largest file read.
pub(crate) const MAX_FILE_BYTES: u64 = 64 * 1024;

/// The most directory entries looked at in one listing (a real `/sys/class/thermal` has
/// tens; `/sys/devices/platform` a few hundred).
pub(crate) const MAX_DIR_ENTRIES: usize = 4096;

/// Reads a whole text file of at most [`MAX_FILE_BYTES`].
///
/// `None` when the file is absent (silently: most readings are optional on most boards) or
/// unreadable, not a regular file, too large or not UTF-8 (with a debug log saying which).
pub(crate) fn read_text(path: &Path) -> Option<String> {
    let bytes = read_bytes(path)?;
    match String::from_utf8(bytes) {
        Ok(text) => Some(text),
        Err(_) => {
            tracing::debug!("sysfs: {} is not UTF-8; ignored", path.display());
            None
        }
    }
}

/// Reads a whole file of at most [`MAX_FILE_BYTES`] as bytes (see [`read_text`]).
pub(crate) fn read_bytes(path: &Path) -> Option<Vec<u8>> {
    read_bytes_max(path, MAX_FILE_BYTES)
}

/// [`read_bytes`] with another limit, for the few files that grow with the machine
/// (`/proc/cpuinfo`).
pub(crate) fn read_bytes_max(path: &Path, max_bytes: u64) -> Option<Vec<u8>> {
    // O_NONBLOCK: opening a FIFO planted in the tree would otherwise block until a writer
    // appears, stalling the sampler for good. It changes nothing for regular files.
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::debug!("sysfs: cannot open {}: {e}", path.display());
            return None;
        }
    };
    // sysfs and procfs attributes are regular files; a device node such as /dev/zero would
    // never end, and a directory cannot be read.
    match file.metadata() {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            tracing::debug!("sysfs: {} is not a regular file; ignored", path.display());
            return None;
        }
        Err(e) => {
            tracing::debug!("sysfs: cannot stat {}: {e}", path.display());
            return None;
        }
    }
    let mut buf = Vec::new();
    // One byte past the limit tells "exactly at the limit" from "too large". sysfs and
    // procfs report a size of 4096 or 0 whatever the contents, so the size in the metadata
    // is no guide.
    if let Err(e) = file.take(max_bytes + 1).read_to_end(&mut buf) {
        // sysfs attributes report driver errors here (EIO, EINVAL, ENODATA from a sensor
        // that is powered down or not ready).
        tracing::debug!("sysfs: cannot read {}: {e}", path.display());
        return None;
    }
    if buf.len() as u64 > max_bytes {
        tracing::debug!(
            "sysfs: {} is larger than {max_bytes} bytes; ignored",
            path.display()
        );
        return None;
    }
    Some(buf)
}

/// Reads a file holding one value (surrounding whitespace trimmed) and parses it with
/// `parse`; garbage is logged at debug level and gives `None`.
pub(crate) fn read_value<T>(path: &Path, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
    let text = read_text(path)?;
    let value = parse(text.trim());
    if value.is_none() {
        tracing::debug!(
            "sysfs: unexpected contents {:?} in {}; ignored",
            shorten(text.trim()),
            path.display()
        );
    }
    value
}

/// The entries of `dir` whose names start with `prefix` followed by a decimal number, with
/// that number, sorted by it (so ties elsewhere resolve the same way on every sample). At
/// most `limit` are returned; an absent or unreadable directory gives none.
pub(crate) fn numbered_entries(dir: &Path, prefix: &str, limit: usize) -> Vec<(u32, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(d) => d,
        Err(e) if e.kind() == ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::debug!("sysfs: cannot list {}: {e}", dir.display());
            return Vec::new();
        }
    };
    let mut found = Vec::new();
    for entry in entries.take(MAX_DIR_ENTRIES).filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        found.push((number, entry.path()));
    }
    found.sort_unstable_by_key(|(n, _)| *n);
    found.truncate(limit);
    found
}

/// The first 64 characters of `text`, for log lines about garbage.
pub(crate) fn shorten(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("spillway-fsread-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_small_files_and_refuses_large_or_odd_ones() {
        let dir = scratch("limits");
        let at_limit = dir.join("at-limit");
        std::fs::write(&at_limit, vec![b'7'; MAX_FILE_BYTES as usize]).unwrap();
        assert_eq!(read_text(&at_limit).unwrap().len(), MAX_FILE_BYTES as usize);

        let over = dir.join("over");
        std::fs::write(&over, vec![b'7'; MAX_FILE_BYTES as usize + 1]).unwrap();
        assert_eq!(read_text(&over), None);

        let binary = dir.join("binary");
        std::fs::write(&binary, [0xff, 0xfe, b'1']).unwrap();
        assert_eq!(read_text(&binary), None);
        assert_eq!(read_bytes(&binary).unwrap(), [0xff, 0xfe, b'1']);

        assert_eq!(read_text(&dir.join("absent")), None);
        // A directory opens but is not a regular file.
        assert_eq!(read_text(&dir), None);

        let number = dir.join("number");
        std::fs::write(&number, " 42\n").unwrap();
        assert_eq!(read_value(&number, |t| t.parse::<u32>().ok()), Some(42));
        std::fs::write(&number, "forty-two\n").unwrap();
        assert_eq!(read_value(&number, |t| t.parse::<u32>().ok()), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = scratch("fifo");
        let fifo = dir.join("temp");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo failed");
        // Without O_NONBLOCK this open would wait for a writer forever.
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read_text(&path)).unwrap());
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("reading a FIFO blocked");
        assert_eq!(got, None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn lists_numbered_entries_in_order() {
        let dir = scratch("numbered");
        for name in [
            "thermal_zone10",
            "thermal_zone2",
            "thermal_zone",
            "thermal_zoneX",
            "cooling_device0",
            "thermal_zone0",
        ] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
        }
        let got: Vec<u32> = numbered_entries(&dir, "thermal_zone", 16)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(got, [0, 2, 10]);
        assert_eq!(numbered_entries(&dir, "thermal_zone", 2).len(), 2);
        assert!(numbered_entries(&dir.join("absent"), "thermal_zone", 16).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn shortens_long_garbage_on_a_char_boundary() {
        assert_eq!(shorten("abc"), "abc");
        let long = "é".repeat(100);
        assert_eq!(shorten(&long).chars().count(), 64);
    }
}

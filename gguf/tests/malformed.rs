//! The malformed-GGUF corpus: every corrupted file is refused with an error naming the
//! problem, `VALID-base.gguf` is accepted, and parsing never allocates more than the file's
//! own size (a counting global allocator measures the peak). This file holds one test so the
//! allocator sees nothing else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use spillway_gguf::Gguf;

struct Counting;
static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[test]
fn every_corruption_is_refused_within_the_files_own_size() {
    let dir = spillway_e2e::fixtures().join("malformed");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 10, "the corpus has its files");
    let mut refused = 0;
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(path).unwrap();
        let before = CURRENT.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        let result = Gguf::parse(bytes.as_slice());
        let peak = PEAK.load(Ordering::Relaxed) - before;
        // Parsing may allocate bookkeeping proportional to the file, never more than it.
        assert!(
            peak <= bytes.len() + 4096,
            "{name}: parsing allocated {peak} bytes for a {}-byte file",
            bytes.len()
        );
        if name.starts_with("VALID") {
            let g = result.unwrap_or_else(|e| panic!("{name} must be accepted: {e}"));
            assert!(!g.tensors().is_empty());
        } else {
            let err = result
                .err()
                .unwrap_or_else(|| panic!("{name} must be refused"));
            let msg = err.to_string();
            eprintln!("{name}: {msg}");
            assert!(msg.len() > 20, "{name}: the error explains itself: {msg}");
            refused += 1;
        }
    }
    assert_eq!(refused, files.len() - 1);
}

//! A persistent pool of worker threads for the matrix kernels.
//!
//! Threads are created once. [`ThreadPool::run`] hands every thread (the caller is thread 0)
//! the same closure and returns when all have finished it: one job, one barrier. Between jobs
//! workers spin for a while (decode calls arrive microseconds apart) and then park on a
//! condition variable, so an idle daemon uses no CPU. Nothing is allocated per job.
//!
//! [`ThreadPool::set_active_threads`] lowers how many threads take part in later jobs (to
//! shed heat on a hot SoC) without stopping any: the others stay parked.
//!
//! Worker threads can be pinned to CPUs (the big cores of a big.LITTLE SoC); the calling
//! thread is left as it is, use [`pin_current_thread`] for it.

use std::cell::UnsafeCell;
use std::io;
use std::marker::PhantomData;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

/// How a pool is built.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Threads taking part in each job, the caller included (at least 1).
    pub threads: usize,
    /// CPUs to pin workers to: worker `i` (1-based; the caller is 0) goes to
    /// `cpus[i % cpus.len()]`. `None` leaves placement to the OS.
    pub cpus: Option<Vec<usize>>,
    /// Busy-wait iterations before an idle thread parks.
    pub spin_iterations: u32,
}

impl PoolConfig {
    /// `threads` threads, no pinning, the default spin.
    pub fn with_threads(threads: usize) -> PoolConfig {
        PoolConfig {
            threads,
            cpus: None,
            spin_iterations: DEFAULT_SPIN,
        }
    }
}

/// Roughly 50-100 microseconds of spinning on current cores: longer than the gap between
/// two matrix products of one token, far shorter than the gap between requests.
const DEFAULT_SPIN: u32 = 1 << 14;

/// A job as the workers see it: the caller's closure with its lifetime erased.
type Job = &'static (dyn Fn(usize, usize) + Sync);

struct Shared {
    /// Bumped once per job (and once at shutdown); workers run the job when it changes.
    generation: AtomicU64,
    /// The current job. Written only by the caller while no job is running, read by workers
    /// only between seeing a new generation and decrementing `remaining`.
    job: UnsafeCell<Option<Job>>,
    /// Workers that have not yet finished the current job.
    remaining: AtomicUsize,
    /// Threads taking part in later jobs (1..=n_threads).
    active: AtomicUsize,
    /// Threads taking part in the current job: workers with an index at or above it skip
    /// the job (written with the job, published by the generation bump).
    job_threads: AtomicUsize,
    /// Workers parked (or about to park) on `wake`.
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
    /// Whether the caller is parked (or about to park) on `done`.
    caller_waiting: AtomicBool,
    done_lock: Mutex<()>,
    done: Condvar,
    worker_panicked: AtomicBool,
    shutdown: AtomicBool,
    n_threads: usize,
    spin: u32,
}

// SAFETY: all fields but `job` are Sync. `job` is only written by the caller in `run` (which
// `caller_lock` serializes) at times when no worker may read it: before the generation bump
// that publishes it (Release/Acquire on `generation`) and after `remaining` reached 0, when
// every worker has finished reading it (AcqRel/Acquire on `remaining`).
unsafe impl Sync for Shared {}

/// A fixed set of threads that run jobs together.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    caller_lock: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("threads", &self.shared.n_threads)
            .finish()
    }
}

impl ThreadPool {
    /// Starts `config.threads - 1` workers.
    pub fn new(config: PoolConfig) -> io::Result<ThreadPool> {
        let n_threads = config.threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            job: UnsafeCell::new(None),
            remaining: AtomicUsize::new(0),
            active: AtomicUsize::new(n_threads),
            job_threads: AtomicUsize::new(n_threads),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
            caller_waiting: AtomicBool::new(false),
            done_lock: Mutex::new(()),
            done: Condvar::new(),
            worker_panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            n_threads,
            spin: config.spin_iterations,
        });
        let mut pool = ThreadPool {
            shared: Arc::clone(&shared),
            workers: Vec::with_capacity(n_threads - 1),
            caller_lock: Mutex::new(()),
        };
        for index in 1..n_threads {
            let cpu = config
                .cpus
                .as_ref()
                .filter(|c| !c.is_empty())
                .map(|c| c[index % c.len()]);
            let shared = Arc::clone(&shared);
            let handle = std::thread::Builder::new()
                .name(format!("spillway-kern-{index}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        // Pinning is an optimisation: a refused mask (e.g. a CPU outside the
                        // cgroup's cpuset) leaves the thread unpinned rather than failing.
                        let _ = pin_current_thread(cpu);
                    }
                    worker_loop(&shared, index)
                })?;
            pool.workers.push(handle);
        }
        Ok(pool)
    }

    /// Threads taking part in each job, the caller included (see
    /// [`ThreadPool::set_active_threads`]).
    pub fn threads(&self) -> usize {
        self.shared.active.load(Ordering::Relaxed)
    }

    /// Threads the pool was built with: the most that [`ThreadPool::threads`] can be.
    pub fn capacity(&self) -> usize {
        self.shared.n_threads
    }

    /// Lets only `threads` threads (clamped to 1..=capacity) take part in later jobs; the
    /// others stay parked. For shedding heat: fewer busy cores, lower SoC temperature.
    pub fn set_active_threads(&self, threads: usize) {
        self.shared
            .active
            .store(threads.clamp(1, self.shared.n_threads), Ordering::Relaxed);
    }

    /// Runs `job(thread_index, n_threads)` on every thread (the caller is index 0) and
    /// returns when all calls have returned. A panic in any of them is re-raised here after
    /// the others finish. Concurrent callers are serialized.
    pub fn run<F>(&self, job: F)
    where
        F: Fn(usize, usize) + Sync,
    {
        let n = self.threads();
        if n == 1 {
            job(0, 1);
            return;
        }
        let _serial = self
            .caller_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let shared = &*self.shared;
        let job_ref: &(dyn Fn(usize, usize) + Sync) = &job;
        // SAFETY: the 'static is a lie told only to `shared.job`, which is cleared below
        // before this function returns, and every worker stops using the reference before it
        // decrements `remaining`, which this function waits to reach zero (even if `job`
        // panics on this thread: the panic is caught first). So the closure outlives every
        // use.
        let job_static: Job = unsafe { std::mem::transmute(job_ref) };
        // SAFETY: no job is running (the previous `run` waited for `remaining == 0`, and
        // `caller_lock` excludes other callers), so no worker reads the slot now.
        unsafe { *shared.job.get() = Some(job_static) };
        shared.remaining.store(n - 1, Ordering::Relaxed);
        shared.job_threads.store(n, Ordering::Relaxed);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        if shared.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = shared
                .sleep_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.wake.notify_all();
        }

        let mine = catch_unwind(AssertUnwindSafe(|| job(0, n)));

        let mut spins = 0u32;
        while shared.remaining.load(Ordering::Acquire) != 0 {
            if spins < shared.spin {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut g = shared
                .done_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.caller_waiting.store(true, Ordering::SeqCst);
            while shared.remaining.load(Ordering::SeqCst) != 0 {
                g = shared.done.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            shared.caller_waiting.store(false, Ordering::SeqCst);
        }
        // SAFETY: `remaining == 0`: every worker is done with the job (see `Shared`).
        unsafe { *shared.job.get() = None };

        if let Err(payload) = mine {
            resume_unwind(payload);
        }
        if shared.worker_panicked.swap(false, Ordering::AcqRel) {
            panic!("a kernel worker thread panicked (its message was printed above)");
        }
    }
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    // A worker left out of the last job parks at once instead of spinning: shedding heat
    // is why it was left out.
    let mut left_out = false;
    loop {
        let mut spins = if left_out { shared.spin } else { 0 };
        loop {
            if shared.generation.load(Ordering::Acquire) != seen {
                break;
            }
            if spins < shared.spin {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut g = shared
                .sleep_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.sleepers.fetch_add(1, Ordering::SeqCst);
            while shared.generation.load(Ordering::SeqCst) == seen {
                g = shared.wake.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
            shared.sleepers.fetch_sub(1, Ordering::SeqCst);
            break;
        }
        seen = shared.generation.load(Ordering::Acquire);
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        left_out = index >= shared.job_threads.load(Ordering::Relaxed);
        if left_out {
            // Not counted in `remaining`: the job never waits for this worker.
            continue;
        }
        // SAFETY: a new generation was published after the slot was written (Acquire above
        // pairs with the caller's SeqCst bump), and the caller will not touch the slot until
        // this worker decrements `remaining` below.
        let job = unsafe { *shared.job.get() };
        if let Some(job) = job
            && catch_unwind(AssertUnwindSafe(|| {
                job(index, shared.job_threads.load(Ordering::Relaxed))
            }))
            .is_err()
        {
            shared.worker_panicked.store(true, Ordering::Release);
        }
        if shared.remaining.fetch_sub(1, Ordering::SeqCst) == 1
            && shared.caller_waiting.load(Ordering::SeqCst)
        {
            let _g = shared
                .done_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            shared.done.notify_one();
        }
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        {
            let _g = self
                .shared
                .sleep_lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A mutable slice shared by the threads of one job, each touching a disjoint part.
pub(crate) struct SharedMut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: `SharedMut` is built from a `&mut [T]` held for 'a and only hands out disjoint
// parts (callers of its unsafe methods guarantee disjointness), so sharing it between
// threads is like sending those parts, which needs `T: Send`.
unsafe impl<T: Send> Sync for SharedMut<'_, T> {}

impl<'a, T> SharedMut<'a, T> {
    pub(crate) fn new(data: &'a mut [T]) -> Self {
        SharedMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            _borrow: PhantomData,
        }
    }

    /// The elements `range`.
    ///
    /// # Safety
    /// No other live reference (on any thread) may overlap `range`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range_mut(&self, range: std::ops::Range<usize>) -> &'a mut [T] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range out of bounds"
        );
        // SAFETY: `range.start <= len`, so the pointer stays within (or one past) the
        // borrowed slice.
        let start = unsafe { self.ptr.add(range.start) };
        // SAFETY: `range` lies inside the borrowed slice (checked above), and no other live
        // reference overlaps it (the caller's guarantee).
        unsafe { std::slice::from_raw_parts_mut(start, range.len()) }
    }
}

impl ThreadPool {
    /// Calls `f(index, chunk, scratch)` for every `chunk_len`-long chunk of `data` (the last
    /// may be shorter), handing chunks to whichever thread is free. Each thread also gets its
    /// own `scratch_per_thread` elements of `scratch` (which must hold that many per thread).
    pub fn for_each_chunk<T: Send, S: Send>(
        &self,
        data: &mut [T],
        chunk_len: usize,
        scratch: &mut [S],
        scratch_per_thread: usize,
        f: impl Fn(usize, &mut [T], &mut [S]) + Sync,
    ) {
        assert!(chunk_len > 0, "chunks must not be empty");
        assert!(
            scratch.len() >= scratch_per_thread * self.threads(),
            "scratch must hold {scratch_per_thread} elements per thread"
        );
        let n_chunks = data.len().div_ceil(chunk_len);
        let len = data.len();
        let data = SharedMut::new(data);
        let scratch = SharedMut::new(scratch);
        let next = AtomicUsize::new(0);
        self.run(|thread, _| {
            // SAFETY: each thread index is used by exactly one thread during `run`, so the
            // scratch ranges of different threads are disjoint.
            let mine = unsafe {
                scratch.range_mut(thread * scratch_per_thread..(thread + 1) * scratch_per_thread)
            };
            loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= n_chunks {
                    break;
                }
                // SAFETY: chunk `c` was claimed by this thread alone (fetch_add), and chunks
                // do not overlap.
                let chunk =
                    unsafe { data.range_mut(c * chunk_len..((c + 1) * chunk_len).min(len)) };
                f(c, chunk, &mut *mine);
            }
        });
    }
}

/// Pins the calling thread to one CPU (Linux; elsewhere returns `Unsupported`).
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {cpu} is beyond CPU_SETSIZE"),
            ));
        }
        // SAFETY: `cpu_set_t` is plain data for which all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `cpu < CPU_SETSIZE` was checked, so CPU_SET stays inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
        // SAFETY: pid 0 is the calling thread; the pointer and size describe `set`.
        let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = cpu;
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "CPU pinning is only implemented on Linux",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_thread_runs_each_job_once() {
        for threads in [1, 2, 3, 5] {
            let pool = ThreadPool::new(PoolConfig::with_threads(threads)).unwrap();
            for _ in 0..200 {
                let hits: Vec<AtomicUsize> = (0..threads).map(|_| AtomicUsize::new(0)).collect();
                pool.run(|i, n| {
                    assert_eq!(n, threads);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            }
        }
    }

    #[test]
    fn fewer_active_threads_run_jobs_and_more_come_back() {
        let pool = ThreadPool::new(PoolConfig::with_threads(4)).unwrap();
        for active in [2, 1, 3, 4, 9, 0] {
            pool.set_active_threads(active);
            let expect = active.clamp(1, 4);
            assert_eq!((pool.threads(), pool.capacity()), (expect, 4));
            for _ in 0..100 {
                let hits: Vec<AtomicUsize> = (0..4).map(|_| AtomicUsize::new(0)).collect();
                pool.run(|i, n| {
                    assert_eq!(n, expect);
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
                for (i, h) in hits.iter().enumerate() {
                    assert_eq!(
                        h.load(Ordering::Relaxed),
                        usize::from(i < expect),
                        "thread {i}"
                    );
                }
            }
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let cfg = PoolConfig {
            threads: 3,
            cpus: None,
            spin_iterations: 0,
        };
        let pool = ThreadPool::new(cfg).unwrap();
        let total = AtomicUsize::new(0);
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_micros(200));
            pool.run(|_, _| {
                total.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 150);
    }

    #[test]
    fn a_worker_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(PoolConfig::with_threads(2)).unwrap();
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|i, _| {
                if i == 1 {
                    panic!("boom");
                }
            })
        }));
        // A worker's panic (not the caller's) comes back as the pool's own message.
        let payload = r.unwrap_err();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str));
        assert!(
            message.is_some_and(|m| m.contains("a kernel worker thread panicked")),
            "{message:?}"
        );
        let ran = AtomicUsize::new(0);
        pool.run(|_, _| {
            ran.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(ran.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn chunks_are_each_visited_once_with_private_scratch() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(PoolConfig::with_threads(threads)).unwrap();
            let mut data = vec![0u32; 1001];
            let mut scratch = vec![0u32; 4 * threads];
            pool.for_each_chunk(&mut data, 10, &mut scratch, 4, |i, chunk, s| {
                assert_eq!(s.len(), 4);
                s[0] += 1; // private: no other thread touches it
                for v in chunk.iter_mut() {
                    *v += i as u32 + 1;
                }
            });
            for (j, v) in data.iter().enumerate() {
                assert_eq!(*v, (j / 10) as u32 + 1);
            }
            let claimed: u32 = scratch.chunks(4).map(|s| s[0]).sum();
            assert_eq!(claimed, 101);
        }
    }

    #[test]
    fn pinning_to_cpu_zero_works() {
        let cfg = PoolConfig {
            threads: 2,
            cpus: Some(vec![0]),
            spin_iterations: DEFAULT_SPIN,
        };
        let pool = ThreadPool::new(cfg).unwrap();
        pool.run(|_, _| {});
        let err = pin_current_thread(usize::MAX).unwrap_err();
        if cfg!(target_os = "linux") {
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(err.to_string().contains("beyond CPU_SETSIZE"), "{err}");
        } else {
            assert_eq!(err.kind(), io::ErrorKind::Unsupported, "{err}");
        }
    }
}

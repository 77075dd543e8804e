//! systemd's readiness and watchdog protocol (`sd_notify(3)`), in plain std: one datagram
//! per notification to the socket named by `$NOTIFY_SOCKET` (a path, or `@name` for the
//! abstract namespace). Without `$NOTIFY_SOCKET` (not under systemd, or `Type=` other than
//! `notify`) every call does nothing.
//!
//! The watchdog pings come from the engine's health: the engine thread updates a
//! [`Heartbeat`] while it waits for work and for every generated token; while a job runs
//! and the heartbeat is older than the watchdog interval, the pings stop and systemd
//! restarts the wedged daemon.

use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Sends notifications to systemd (or nowhere, when not started by it).
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog: None,
        }
    }

    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID`.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        let target = socket.and_then(|s| match connect(&s) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!("NOTIFY_SOCKET={}: {e}; not notifying systemd", s.display());
                None
            }
        });
        let watchdog = target
            .as_ref()
            .and_then(|_| watchdog_interval(usec.as_deref(), pid.as_deref(), std::process::id()));
        Notifier { target, watchdog }
    }

    /// Whether notifications go anywhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog interval systemd expects pings within (`$WATCHDOG_USEC`), if any.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog
    }

    /// Sends `fields` as one notification; failures are logged, never fatal.
    pub fn send(&self, fields: &[(&str, &str)]) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let msg = message(fields);
        if let Err(e) = socket.send_to_addr(msg.as_bytes(), addr) {
            tracing::debug!("cannot notify systemd ({msg:?}): {e}");
        }
    }

    /// `STATUS=`: what the daemon is doing, for `systemctl status`.
    pub fn status(&self, status: &str) {
        self.send(&[("STATUS", status)]);
    }

    /// `READY=1`: start-up is complete.
    pub fn ready(&self, status: &str) {
        self.send(&[("READY", "1"), ("STATUS", status)]);
    }

    /// `STOPPING=1`: shutdown began.
    pub fn stopping(&self, status: &str) {
        self.send(&[("STOPPING", "1"), ("STATUS", status)]);
    }

    /// `WATCHDOG=1`: still alive.
    pub fn ping(&self) {
        self.send(&[("WATCHDOG", "1")]);
    }
}

/// A notification: `KEY=value` lines. A value cannot span lines (the protocol is
/// newline-separated), so line breaks in it become spaces.
pub fn message(fields: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (key, value) in fields {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(key);
        out.push('=');
        out.extend(value.chars().map(|c| if c == '\n' { ' ' } else { c }));
    }
    out
}

/// The address `$NOTIFY_SOCKET` names: an absolute path, or `@name` in the abstract
/// namespace.
pub fn notify_addr(socket: &OsStr) -> io::Result<SocketAddr> {
    let bytes = socket.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(socket),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not an absolute path or an @abstract name",
        )),
    }
}

fn connect(socket: &OsStr) -> io::Result<(UnixDatagram, SocketAddr)> {
    let addr = notify_addr(socket)?;
    let sock = UnixDatagram::unbound()?;
    // Never block the caller (an async task) on a full receive queue.
    sock.set_nonblocking(true)?;
    Ok((sock, addr))
}

/// The watchdog interval from `$WATCHDOG_USEC`, unless `$WATCHDOG_PID` names another
/// process (the variables were inherited) or the value is not a positive number.
pub fn watchdog_interval(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid
        && pid.trim().parse::<u32>().ok() != Some(own_pid)
    {
        return None;
    }
    match usec?.trim().parse::<u64>() {
        Ok(us) if us > 0 => Some(Duration::from_micros(us)),
        _ => None,
    }
}

/// The engine thread's sign of life: when it last made progress, and whether it is
/// running a job (an idle engine waiting for work is healthy however long it waits).
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat.
    last_ms: AtomicU64,
    busy: AtomicBool,
    /// A progress counter the engine bumps inside long operations (transformer layers
    /// evaluated): when it moved since the last check, that counts as a beat, so a long
    /// prompt (minutes before its first token on a Pi 4) is not taken for a wedged loop.
    progress: std::sync::OnceLock<std::sync::Arc<AtomicU64>>,
    progress_seen: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicBool::new(false),
            progress: std::sync::OnceLock::new(),
            progress_seen: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    /// Also counts movement of `counter` as progress (set once; later calls are ignored).
    pub fn follow(&self, counter: std::sync::Arc<AtomicU64>) {
        let _ = self.progress.set(counter);
    }

    /// Progress: waiting for work, or a token generated.
    pub fn beat(&self) {
        self.beat_at(Instant::now());
    }

    fn beat_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.origin).as_millis();
        self.last_ms
            .fetch_max(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// A job starts (`true`) or ends (`false`); both count as a beat.
    pub fn set_busy(&self, busy: bool) {
        self.beat();
        self.busy.store(busy, Ordering::Release);
    }

    /// Whether the engine is idle, or running a job and beat within `limit`.
    pub fn healthy(&self, limit: Duration) -> bool {
        self.healthy_at(Instant::now(), limit)
    }

    fn healthy_at(&self, now: Instant, limit: Duration) -> bool {
        if !self.busy.load(Ordering::Acquire) {
            return true;
        }
        if let Some(counter) = self.progress.get() {
            let value = counter.load(Ordering::Relaxed);
            if self.progress_seen.swap(value, Ordering::Relaxed) != value {
                self.beat_at(now);
            }
        }
        let last = self.origin + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        now.saturating_duration_since(last) <= limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_progress_counts_as_a_beat_while_busy() {
        let hb = Heartbeat::default();
        let counter = std::sync::Arc::new(AtomicU64::new(0));
        hb.follow(std::sync::Arc::clone(&counter));
        hb.set_busy(true);
        let limit = Duration::from_secs(30);
        let t0 = Instant::now();
        // A long prompt: no token for a minute, but layers keep being evaluated.
        for minute_tenths in 1..=10u64 {
            counter.fetch_add(26, Ordering::Relaxed);
            assert!(hb.healthy_at(t0 + Duration::from_secs(6 * minute_tenths), limit));
        }
        // Then the loop wedges: the counter stops and the beat goes stale.
        assert!(hb.healthy_at(t0 + Duration::from_secs(80), limit));
        assert!(!hb.healthy_at(t0 + Duration::from_secs(95), limit));
    }

    #[test]
    fn messages_are_key_value_lines() {
        assert_eq!(message(&[("READY", "1")]), "READY=1");
        assert_eq!(
            message(&[("READY", "1"), ("STATUS", "serving: 0 queued")]),
            "READY=1\nSTATUS=serving: 0 queued"
        );
        assert_eq!(
            message(&[("STATUS", "two\nlines")]),
            "STATUS=two lines",
            "a value stays on its line"
        );
        assert_eq!(message(&[]), "");
    }

    #[test]
    fn addresses_are_paths_or_abstract_names() {
        let a = notify_addr(OsStr::new("/run/systemd/notify")).unwrap();
        assert_eq!(
            a.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let a = notify_addr(OsStr::new("@spillway/notify")).unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"spillway/notify"[..]));
        for bad in ["relative.sock", ""] {
            let err = notify_addr(OsStr::new(bad)).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}: {err}");
            assert!(
                err.to_string()
                    .contains("not an absolute path or an @abstract name"),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn notifications_reach_an_abstract_socket() {
        let name = format!("spillway-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let receiver = UnixDatagram::bind_addr(&addr).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let n = Notifier {
            target: Some(connect(OsStr::new(&format!("@{name}"))).unwrap()),
            watchdog: None,
        };
        assert!(n.enabled());
        n.ready("serving");
        n.ping();
        n.stopping("shutting down");
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = receiver.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        assert_eq!(
            got,
            [
                "READY=1\nSTATUS=serving",
                "WATCHDOG=1",
                "STOPPING=1\nSTATUS=shutting down"
            ]
        );
    }

    #[test]
    fn disabled_notifier_sends_nothing() {
        let n = Notifier::disabled();
        assert!(!n.enabled());
        assert_eq!(n.watchdog(), None);
        n.ready("x");
        n.ping();
    }

    #[test]
    fn watchdog_interval_follows_systemd_rules() {
        assert_eq!(
            watchdog_interval(Some("30000000"), None, 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("7"), 7),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval(Some("30000000"), Some("8"), 7),
            None,
            "meant for another process"
        );
        assert_eq!(watchdog_interval(Some("0"), None, 7), None);
        assert_eq!(watchdog_interval(Some("soon"), None, 7), None);
        assert_eq!(watchdog_interval(None, Some("7"), 7), None);
    }

    #[test]
    fn idle_engine_is_healthy_however_long_it_waits() {
        let h = Heartbeat::default();
        let later = h.origin + Duration::from_secs(3600);
        assert!(h.healthy_at(later, Duration::from_secs(30)));
    }

    #[test]
    fn busy_engine_is_healthy_only_while_it_beats() {
        let h = Heartbeat::default();
        let limit = Duration::from_secs(30);
        h.set_busy(true);
        let start = h.origin + Duration::from_millis(h.last_ms.load(Ordering::Relaxed));
        assert!(h.healthy_at(start + Duration::from_secs(29), limit));
        assert!(
            !h.healthy_at(start + Duration::from_secs(31), limit),
            "a job with no token for longer than the interval is wedged"
        );
        h.beat_at(start + Duration::from_secs(40));
        assert!(h.healthy_at(start + Duration::from_secs(45), limit));
        assert!(!h.healthy_at(start + Duration::from_secs(71), limit));
        h.set_busy(false);
        assert!(
            h.healthy_at(start + Duration::from_secs(500), limit),
            "done: idle again"
        );
    }

    #[test]
    fn beats_never_go_backwards() {
        let h = Heartbeat::default();
        h.beat_at(h.origin + Duration::from_secs(10));
        h.beat_at(h.origin + Duration::from_secs(5));
        assert_eq!(h.last_ms.load(Ordering::Relaxed), 10_000);
    }
}

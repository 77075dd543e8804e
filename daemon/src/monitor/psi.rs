//! Pressure stall information (`/proc/pressure/{memory,cpu}`, Linux 4.20+ with `CONFIG_PSI`):
//! the share of wall time in which some (or all) runnable tasks were stalled waiting for
//! memory or CPU. Rising memory pressure is the earliest sign that the page cache is being
//! squeezed, before `MemAvailable` says so.

use std::path::Path;

use crate::sysfs;

/// One line of a pressure file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PsiLine {
    /// Percentage of the last 10 s stalled (0–100).
    pub avg10: f32,
    /// Percentage of the last 60 s stalled.
    pub avg60: f32,
    /// Percentage of the last 300 s stalled.
    pub avg300: f32,
    /// Total stall time since boot, in microseconds.
    pub total_us: u64,
}

/// A pressure file: `some` (at least one task stalled) and `full` (all non-idle tasks
/// stalled at once).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Pressure {
    pub some: PsiLine,
    /// Absent from `/proc/pressure/cpu` before Linux 5.13 (and always zero there at the
    /// system level since).
    pub full: Option<PsiLine>,
}

/// Parses a pressure file. `None` unless a valid `some` line is present; an invalid `full`
/// line makes the whole file invalid, since it means the format is not what we know.
pub(crate) fn parse_pressure(text: &str) -> Option<Pressure> {
    let mut some = None;
    let mut full = None;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let slot = match words.next() {
            Some("some") => &mut some,
            Some("full") => &mut full,
            // Unknown line kinds are left alone, in case kernels add some.
            _ => continue,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(parse_line(words)?);
    }
    Some(Pressure { some: some?, full })
}

fn parse_line<'a>(words: impl Iterator<Item = &'a str>) -> Option<PsiLine> {
    let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
    for word in words {
        let (key, value) = word.split_once('=')?;
        let avg = || {
            value
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && (0.0..=100.0).contains(v))
        };
        match key {
            "avg10" => avg10 = Some(avg()?),
            "avg60" => avg60 = Some(avg()?),
            "avg300" => avg300 = Some(avg()?),
            "total" => total = Some(value.parse::<u64>().ok()?),
            // Future fields are tolerated.
            _ => {}
        }
    }
    Some(PsiLine {
        avg10: avg10?,
        avg60: avg60?,
        avg300: avg300?,
        total_us: total?,
    })
}

/// Reads `proc/pressure/<resource>` under `root`.
pub(crate) fn pressure(root: &Path, resource: &str) -> Option<Pressure> {
    let path = root.join("proc/pressure").join(resource);
    let text = sysfs::read_text(&path)?;
    let parsed = parse_pressure(&text);
    if parsed.is_none() {
        tracing::debug!(
            "monitor: unexpected contents {:?} in {}; ignored",
            sysfs::shorten(text.trim()),
            path.display()
        );
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_memory_pressure() {
        let text = "some avg10=1.50 avg60=0.75 avg300=0.10 total=123456\n\
                    full avg10=0.25 avg60=0.00 avg300=0.00 total=789\n";
        let p = parse_pressure(text).unwrap();
        assert_eq!(
            p.some,
            PsiLine {
                avg10: 1.5,
                avg60: 0.75,
                avg300: 0.1,
                total_us: 123456
            }
        );
        assert_eq!(p.full.unwrap().avg10, 0.25);
        assert_eq!(p.full.unwrap().total_us, 789);
    }

    #[test]
    fn cpu_pressure_may_lack_full() {
        let p = parse_pressure("some avg10=99.99 avg60=50.00 avg300=100.00 total=1\n").unwrap();
        assert_eq!(p.full, None);
        assert_eq!(p.some.avg10, 99.99);
    }

    #[test]
    fn refuses_garbage() {
        for bad in [
            "",
            "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=0.00 avg60=0.00 total=0\n",
            "some avg10=abc avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=150.00 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=-1.00 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=NaN avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=-5\n",
            "some avg10 0.00 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n\
             some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=x\n",
        ] {
            assert_eq!(parse_pressure(bad), None, "{bad:?}");
        }
        // Unknown fields and line kinds are tolerated.
        let p =
            parse_pressure("some avg10=1.00 avg60=2.00 avg300=3.00 total=4 avg1=9.00\nother x\n")
                .unwrap();
        assert_eq!(p.some.avg300, 3.0);
    }
}

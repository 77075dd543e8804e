//! Byte quantities for people: `2.00 GiB` out, `4GiB` / `512M` / `1500000000` in.

/// Bytes in binary units, e.g. `2.00 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// Parses a byte count: a plain number, or a number with a unit (`K`, `M`, `G`, `T` or
/// `KB`.. are decimal; `KiB`, `MiB`, `GiB`, `TiB` binary; case-insensitive; spaces and
/// fractions allowed, e.g. `1.5 GiB`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a byte count (e.g. 4GiB, 512MiB, 1500000000)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown byte unit {other:?} in {text:?} (use B, KB, MB, GB, KiB, MiB, GiB)"
            ));
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_and_parses() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(parse_bytes("4GiB"), Ok(4 << 30));
        assert_eq!(parse_bytes("1.5 gib"), Ok(3 << 29));
        assert_eq!(parse_bytes("512M"), Ok(512_000_000));
        assert_eq!(parse_bytes(" 1500000000 "), Ok(1_500_000_000));
        for (bad, want) in [
            ("4 GB/s", "unknown byte unit \"gb/s\""),
            ("lots", "\"lots\" is not a byte count"),
            ("", "\"\" is not a byte count"),
        ] {
            let err = parse_bytes(bad).unwrap_err();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }
}

//! Typed values that TOML spells as strings: byte sizes (`"128MiB"`) and the RAM budget
//! (`"auto"`, `"none"` or a size). They parse when the file is read, so a bad value is
//! reported with the file's line and column, and serialize back to a string the parser
//! takes, so `spillway config --check` prints a file that reads back the same.

use std::fmt;
use std::str::FromStr;

use crate::units::parse_bytes;

/// A byte count written with an optional unit (`4GiB`, `512M`, `1500000000`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        parse_bytes(s).map(ByteSize)
    }
}

impl fmt::Display for ByteSize {
    /// The largest binary unit that divides it exactly, so it reads back unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
            if n != 0 && n.is_multiple_of(1u64 << shift) {
                return write!(f, "{}{unit}", n >> shift);
            }
        }
        write!(f, "{n}")
    }
}

/// Implements `Serialize` and `Deserialize` through `Display` and `FromStr`.
macro_rules! string_serde {
    ($t:ty, $what:literal) => {
        impl serde::Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> serde::Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str($what)
                    }
                    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$t, E> {
                        v.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}
pub(crate) use string_serde;

string_serde!(ByteSize, "a byte count such as \"512MiB\"");

/// `engine.ram_budget`: the largest memory plan allowed to load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RamBudgetSetting {
    /// The board profile's share of RAM (`"auto"`).
    #[default]
    Auto,
    /// No limit (`"none"`).
    Unlimited,
    /// At most this many bytes.
    Bytes(ByteSize),
}

impl FromStr for RamBudgetSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<RamBudgetSetting, String> {
        match s.trim() {
            "" | "auto" => Ok(RamBudgetSetting::Auto),
            "none" => Ok(RamBudgetSetting::Unlimited),
            other => other
                .parse()
                .map(RamBudgetSetting::Bytes)
                .map_err(|e| format!("{e}; or \"auto\" or \"none\"")),
        }
    }
}

impl fmt::Display for RamBudgetSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RamBudgetSetting::Auto => f.write_str("auto"),
            RamBudgetSetting::Unlimited => f.write_str("none"),
            RamBudgetSetting::Bytes(b) => b.fmt(f),
        }
    }
}

string_serde!(
    RamBudgetSetting,
    "\"auto\", \"none\" or a byte count such as \"3GiB\""
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_back_as_written() {
        for (text, bytes) in [
            ("128MiB", 128 << 20),
            ("3GiB", 3 << 30),
            ("1TiB", 1 << 40),
            ("4KiB", 4 << 10),
            ("1500000000", 1_500_000_000),
            ("0", 0),
        ] {
            let b: ByteSize = text.parse().unwrap();
            assert_eq!(b.bytes(), bytes, "{text}");
            assert_eq!(b.to_string(), text);
        }
        // Decimal units come back in the largest exact binary unit, or as a plain count.
        let b: ByteSize = "512M".parse().unwrap();
        assert_eq!(b.to_string(), "500000KiB");
        assert_eq!(
            "1000001".parse::<ByteSize>().unwrap().to_string(),
            "1000001"
        );
        assert_eq!(b.to_string().parse::<ByteSize>().unwrap(), b);
        let err = "lots".parse::<ByteSize>().unwrap_err();
        assert!(err.contains("\"lots\" is not a byte count"), "{err}");
    }

    #[test]
    fn ram_budgets() {
        let p = |s: &str| s.parse::<RamBudgetSetting>();
        assert_eq!(p("auto"), Ok(RamBudgetSetting::Auto));
        assert_eq!(p(""), Ok(RamBudgetSetting::Auto));
        assert_eq!(p("none"), Ok(RamBudgetSetting::Unlimited));
        assert_eq!(p(" 3GiB "), Ok(RamBudgetSetting::Bytes(ByteSize(3 << 30))));
        let e = p("lots").unwrap_err();
        assert!(e.contains("\"lots\"") && e.contains("\"none\""), "{e}");
        for v in [
            RamBudgetSetting::Auto,
            RamBudgetSetting::Unlimited,
            RamBudgetSetting::Bytes(ByteSize(5 << 29)),
        ] {
            assert_eq!(p(&v.to_string()), Ok(v));
        }
    }
}

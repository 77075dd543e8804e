//! The `[model]` and `[engine]` sections: the model file and the inference engine's
//! settings, each of which may be left to the board profile (`0` or `"auto"`). Their own
//! bounds are checked here; what `auto` resolves to needs the board, and is decided in
//! [`super::resolve`].

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::values::RamBudgetSetting;
use super::{ConfigError, invalid};
use crate::model::KvType;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelSection {
    /// The GGUF model file.
    pub path: PathBuf,
    /// Lock the weights in RAM (needs LimitMEMLOCK at least the file's size).
    pub mlock: bool,
}

impl Default for ModelSection {
    fn default() -> Self {
        ModelSection {
            path: PathBuf::from("/var/lib/spillway/models/model.gguf"),
            mlock: false,
        }
    }
}

/// `engine.kv_type`: the KV cache's element type, or the board profile's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvTypeSetting {
    #[default]
    #[serde(rename = "auto", alias = "")]
    Auto,
    #[serde(rename = "f16")]
    F16,
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl KvTypeSetting {
    /// The type chosen, or `None` for the board's.
    pub fn kv_type(self) -> Option<KvType> {
        match self {
            KvTypeSetting::Auto => None,
            KvTypeSetting::F16 => Some(KvType::F16),
            KvTypeSetting::Q8_0 => Some(KvType::Q8_0),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Compute threads; 0 means the board profile's (one per big core, or per CPU).
    pub threads: usize,
    /// CPUs to pin compute threads to (empty: the board profile's big cores, if any).
    pub cpus: Vec<usize>,
    /// Context per session, in tokens; 0 means the board profile's for its RAM size.
    pub context: usize,
    /// KV cache element type: `f16`, `q8_0`, or `auto` (the board profile's).
    pub kv_type: KvTypeSetting,
    /// Sessions whose KV cache is kept for follow-up turns; 0 means the board profile's.
    pub sessions: usize,
    /// Prompt tokens evaluated per pass.
    pub batch: usize,
    /// Largest memory plan allowed to load: `auto` (the board profile's share of RAM),
    /// bytes such as `3GiB`, or `none`.
    pub ram_budget: RamBudgetSetting,
}

impl Default for EngineSection {
    fn default() -> Self {
        EngineSection {
            threads: 0,
            cpus: Vec::new(),
            context: 0,
            kv_type: KvTypeSetting::Auto,
            sessions: 0,
            batch: 64,
            ram_budget: RamBudgetSetting::Auto,
        }
    }
}

/// The highest CPU number `engine.cpus` may name (`CPU_SETSIZE`).
const MAX_CPU: usize = 1023;

impl EngineSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.context != 0 && !(16..=1 << 20).contains(&self.context) {
            return Err(invalid(
                "engine.context",
                "must be between 16 and 1048576 tokens (0: the board's)",
            ));
        }
        if self.sessions > crate::engine::MAX_SESSIONS {
            return Err(invalid(
                "engine.sessions",
                "must be between 1 and 64 (0: the board's)",
            ));
        }
        if !(1..=4096).contains(&self.batch) {
            return Err(invalid("engine.batch", "must be between 1 and 4096"));
        }
        if self.threads > 1024 {
            return Err(invalid(
                "engine.threads",
                "must be at most 1024 (0 means one per CPU)",
            ));
        }
        if self.cpus.len() > MAX_CPU + 1 || self.cpus.iter().any(|&c| c > MAX_CPU) {
            return Err(invalid(
                "engine.cpus",
                format!("must be CPU numbers up to {MAX_CPU}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_types_are_named_as_in_the_file() {
        let e: EngineSection = toml::from_str("kv_type = \"q8_0\"").unwrap();
        assert_eq!(e.kv_type.kv_type(), Some(KvType::Q8_0));
        let e: EngineSection = toml::from_str("kv_type = \"\"").unwrap();
        assert_eq!(e.kv_type, KvTypeSetting::Auto);
        let err = toml::from_str::<EngineSection>("kv_type = \"q4\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("q4") && err.contains("q8_0"), "{err}");
    }

    #[test]
    fn bounds() {
        let bad = |f: fn(&mut EngineSection)| {
            let mut e = EngineSection::default();
            f(&mut e);
            e.validate().unwrap_err().to_string()
        };
        assert!(bad(|e| e.context = 8).starts_with("engine.context:"));
        assert!(bad(|e| e.sessions = 65).starts_with("engine.sessions:"));
        assert!(bad(|e| e.batch = 0).starts_with("engine.batch:"));
        assert!(bad(|e| e.threads = 5000).starts_with("engine.threads:"));
        assert!(bad(|e| e.cpus = vec![2048]).starts_with("engine.cpus:"));
        EngineSection::default().validate().unwrap();
    }
}

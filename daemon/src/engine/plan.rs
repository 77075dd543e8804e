//! The memory plan: what a configured engine will hold in RAM, computed before anything is
//! allocated, printed at start, and checked against the RAM budget.
//!
//! Weights are memory-mapped: decoding touches every page, so they count in full. The KV
//! cache is allocated per session slot for the configured context; scratch is the forward
//! pass's buffers; the tokenizer's tables and a fixed runtime allowance (binary, libc,
//! thread stacks, allocator slack) complete it. When the plan exceeds the budget, the error
//! shows the table and what would fit: the longest context per KV type.

use std::fmt;

use crate::model::KvType;
use crate::units::human_bytes;

/// Process memory outside the plan's itemised parts: the binary's own pages and libc
/// (about 4 MiB resident on x86_64), the pages of thread stacks actually touched, allocator
/// slack. Rounded up.
pub const RUNTIME_ALLOWANCE: u64 = 16 << 20;

/// Bytes the tokenizer costs: the GGUF header's pages (tokens and merges live there and
/// are read at load) plus the loaded tables, measured at under 36 bytes per token on the
/// 131072-token Tekken vocabulary (4.6 MiB) and rounded up to 48.
pub fn tokenizer_estimate(header_bytes: u64, n_vocab: usize) -> u64 {
    if n_vocab == 0 {
        return 0;
    }
    header_bytes + n_vocab as u64 * 48
}

/// What an engine will hold in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Mapped tensor data.
    pub weights: u64,
    pub kv_type: KvType,
    /// Context (tokens) of each session slot.
    pub context: usize,
    /// KV cache bytes per token of context.
    pub kv_per_token: u64,
    pub sessions: usize,
    /// Forward-pass buffers.
    pub scratch: u64,
    pub tokenizer: u64,
    pub runtime: u64,
    /// The limit, if one was given.
    pub budget: Option<u64>,
    /// KV bytes per token for the other cache type (for suggestions).
    pub kv_per_token_alt: (KvType, u64),
}

impl MemoryPlan {
    /// KV cache bytes of one session slot.
    pub fn kv_per_session(&self) -> u64 {
        self.kv_per_token * self.context as u64
    }

    /// KV cache bytes of every slot.
    pub fn kv_total(&self) -> u64 {
        self.kv_per_session() * self.sessions as u64
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv_total() + self.scratch + self.tokenizer + self.runtime
    }

    /// The longest context per session that fits the budget with `kv_per_token` bytes per
    /// token (scratch held as planned, which slightly overestimates for shorter contexts).
    fn max_context(&self, kv_per_token: u64) -> Option<u64> {
        let budget = self.budget?;
        let fixed = self.weights + self.scratch + self.tokenizer + self.runtime;
        Some(budget.saturating_sub(fixed) / (kv_per_token * self.sessions as u64).max(1))
    }

    /// Refuses a plan over its budget, saying what would fit.
    pub fn check(&self) -> Result<(), PlanError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        if self.total() <= budget {
            return Ok(());
        }
        let mut fits = Vec::new();
        let ours = self.max_context(self.kv_per_token).unwrap_or(0);
        let (alt_ty, alt_per_token) = self.kv_per_token_alt;
        let alt = self.max_context(alt_per_token).unwrap_or(0);
        if ours >= 256 {
            fits.push(format!(
                "a context of {ours} tokens with the {} KV cache",
                self.kv_type.name()
            ));
        }
        if alt >= 256 && alt > ours {
            fits.push(format!(
                "a context of {alt} tokens with a {} KV cache",
                alt_ty.name()
            ));
        }
        if self.sessions > 1 {
            fits.push("fewer sessions".to_string());
        }
        let hint = if fits.is_empty() {
            "the weights alone do not fit: use a smaller quantization or a larger budget"
                .to_string()
        } else {
            format!("what would fit: {}", fits.join(", or "))
        };
        Err(PlanError::OverBudget {
            total: self.total(),
            budget,
            table: self.to_string(),
            hint,
        })
    }
}

impl fmt::Display for MemoryPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let row = |f: &mut fmt::Formatter<'_>, what: &str, n: u64| {
            writeln!(f, "  {what:<44} {:>12}", human_bytes(n))
        };
        writeln!(f, "memory plan:")?;
        row(f, "weights (memory-mapped)", self.weights)?;
        row(
            f,
            &format!(
                "KV cache ({} x {} tokens, {}, {}/token)",
                self.sessions,
                self.context,
                self.kv_type.name(),
                human_bytes(self.kv_per_token)
            ),
            self.kv_total(),
        )?;
        row(f, "scratch (forward-pass buffers)", self.scratch)?;
        row(
            f,
            "tokenizer (tables and GGUF metadata pages)",
            self.tokenizer,
        )?;
        row(f, "runtime allowance", self.runtime)?;
        row(f, "total", self.total())?;
        match self.budget {
            Some(b) => write!(f, "  {:<44} {:>12}", "budget", human_bytes(b)),
            None => write!(f, "  {:<44} {:>12}", "budget", "none set"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("the model does not fit the RAM budget: it needs {} but the budget is {}; {hint}\n{table}", human_bytes(*total), human_bytes(*budget))]
    OverBudget {
        total: u64,
        budget: u64,
        table: String,
        hint: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(budget: Option<u64>) -> MemoryPlan {
        // The 3B Q4_K_M: 2.0 GiB of weights, 104 KiB per token in f16, 4096 tokens.
        MemoryPlan {
            weights: 2_147_000_000,
            kv_type: KvType::F16,
            context: 4096,
            kv_per_token: 106_496,
            sessions: 1,
            scratch: 40 << 20,
            tokenizer: 30 << 20,
            runtime: RUNTIME_ALLOWANCE,
            budget,
            kv_per_token_alt: (KvType::Q8_0, 56_576),
        }
    }

    #[test]
    fn within_budget_passes() {
        assert!(plan(None).check().is_ok());
        assert!(plan(Some(4 << 30)).check().is_ok());
    }

    #[test]
    fn over_budget_says_what_would_fit() {
        let err = plan(Some(2_500_000_000)).check().unwrap_err().to_string();
        assert!(err.contains("does not fit the RAM budget"), "{err}");
        assert!(err.contains("tokens with the f16 KV cache"), "{err}");
        assert!(err.contains("tokens with a q8_0 KV cache"), "{err}");
        assert!(err.contains("weights (memory-mapped)"), "{err}");
        let err = plan(Some(1 << 30)).check().unwrap_err().to_string();
        assert!(err.contains("weights alone do not fit"), "{err}");
    }

    #[test]
    fn suggestions_fit_their_budget() {
        let p = plan(Some(2_500_000_000));
        let ctx = p.max_context(p.kv_per_token).unwrap() as usize;
        let smaller = MemoryPlan {
            context: ctx,
            ..p.clone()
        };
        assert!(smaller.check().is_ok());
        let bigger = MemoryPlan {
            context: ctx + 1,
            ..p
        };
        assert!(bigger.check().is_err());
    }
}

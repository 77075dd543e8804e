//! The memory plan: what a configured engine will hold in RAM, computed before anything is
//! allocated, printed at start, and checked against the RAM budget.
//!
//! Weights are memory-mapped: decoding touches every page, so they count in full. The KV
//! cache is allocated per session slot for the configured context; scratch is the forward
//! pass's buffers; the tokenizer's tables and a fixed runtime allowance (binary, libc,
//! thread stacks, allocator slack) complete it. When the plan exceeds the budget, the error
//! shows the table and what would fit ([`MemoryPlan::alternatives`]): the longest context
//! with this KV cache type, the other type, fewer sessions. Each suggestion is a plan of its
//! own, checked against the budget and shown with its total; one that would not fit is
//! not suggested.

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

    /// Changes of one setting that bring this plan within its budget, each with the plan
    /// it leads to, smallest change first per setting: the longest context (at least
    /// [`MIN_SUGGESTED_CONTEXT`] tokens) with this KV cache type; the other KV cache type
    /// (at this context, or the longest that fits); the most sessions that fit. Scratch is
    /// held as planned, which overestimates a shorter context's slightly, so a suggestion
    /// never fits on paper only. Empty when the plan fits or has no budget.
    pub fn alternatives(&self) -> Vec<Alternative> {
        let Some(budget) = self.budget else {
            return Vec::new();
        };
        if self.total() <= budget {
            return Vec::new();
        }
        let fits = |p: &MemoryPlan| p.total() <= budget;
        let mut out = Vec::new();
        let longest = |kv_per_token: u64| {
            self.max_context(kv_per_token)
                .map_or(0, |c| usize::try_from(c).unwrap_or(usize::MAX))
                .min(self.context)
        };
        let ours = longest(self.kv_per_token);
        let shorter = MemoryPlan {
            context: ours,
            ..self.clone()
        };
        if ours >= MIN_SUGGESTED_CONTEXT && fits(&shorter) {
            out.push(Alternative {
                change: format!(
                    "a context of {ours} tokens with the {} KV cache",
                    self.kv_type.name()
                ),
                plan: shorter,
            });
        }
        let (alt_type, alt_per_token) = self.kv_per_token_alt;
        let alt_context = longest(alt_per_token);
        let other_type = MemoryPlan {
            kv_type: alt_type,
            kv_per_token: alt_per_token,
            kv_per_token_alt: (self.kv_type, self.kv_per_token),
            context: alt_context,
            ..self.clone()
        };
        if alt_context >= MIN_SUGGESTED_CONTEXT && alt_context > ours && fits(&other_type) {
            let change = if alt_context == self.context {
                format!(
                    "a {} KV cache at the same {alt_context}-token context",
                    alt_type.name()
                )
            } else {
                format!(
                    "a context of {alt_context} tokens with a {} KV cache",
                    alt_type.name()
                )
            };
            out.push(Alternative {
                change,
                plan: other_type,
            });
        }
        if let Some(plan) = (1..self.sessions).rev().find_map(|sessions| {
            let p = MemoryPlan {
                sessions,
                ..self.clone()
            };
            fits(&p).then_some(p)
        }) {
            out.push(Alternative {
                change: format!(
                    "{} session{} of {} tokens",
                    plan.sessions,
                    if plan.sessions == 1 { "" } else { "s" },
                    plan.context
                ),
                plan,
            });
        }
        out
    }

    /// Refuses a plan over its budget, saying what would fit.
    pub fn check(&self) -> Result<(), PlanError> {
        let Some(budget) = self.budget else {
            return Ok(());
        };
        if self.total() <= budget {
            return Ok(());
        }
        let fits: Vec<String> = self
            .alternatives()
            .iter()
            .map(|a| format!("{} ({} planned)", a.change, human_bytes(a.plan.total())))
            .collect();
        let without_kv = self.total() - self.kv_total();
        let hint = if without_kv > budget {
            format!(
                "the weights alone do not fit (the plan without any KV cache is {}): use a \
                 smaller quantization or a larger budget",
                human_bytes(without_kv)
            )
        } else if fits.is_empty() {
            format!(
                "no context of {MIN_SUGGESTED_CONTEXT} tokens or more fits with either KV cache \
                 type: use a smaller quantization or a larger budget"
            )
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

/// Shorter contexts than this are not suggested: too short for a chat turn to be useful.
pub const MIN_SUGGESTED_CONTEXT: usize = 256;

/// One setting changed so that a plan fits its budget.
#[derive(Clone, Debug, PartialEq)]
pub struct Alternative {
    /// The change, e.g. `a context of 2900 tokens with the f16 KV cache`.
    pub change: String,
    /// The plan with the change made; it fits the budget.
    pub plan: MemoryPlan,
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
        assert!(
            err.contains("a q8_0 KV cache at the same 4096-token context (2.30 GiB planned)"),
            "{err}"
        );
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
        match bigger.check() {
            Err(PlanError::OverBudget { total, budget, .. }) => {
                assert_eq!(budget, 2_500_000_000);
                assert!(total > budget, "{total} > {budget}");
            }
            r => panic!("not over budget: {r:?}"),
        }
    }

    /// Every alternative is a plan that passes its own check, and each is named with its
    /// numbers; the ones that would not fit are left out.
    #[test]
    fn only_alternatives_that_fit_are_suggested() {
        let four = |budget| MemoryPlan {
            sessions: 4,
            ..plan(Some(budget))
        };
        // 4 x 4096 f16 tokens need 1.62 GiB of KV; 2.0 GiB weights + 86 MiB fixed.
        let fixed = four(0).total() - four(0).kv_total();
        let per_session = four(0).kv_per_session();

        // Room for 2 sessions and a bit: every kind of change fits.
        let p = four(fixed + 2 * per_session + 1000);
        let alts = p.alternatives();
        let changes: Vec<&str> = alts.iter().map(|a| a.change.as_str()).collect();
        assert_eq!(alts.len(), 3, "{changes:?}");
        assert_eq!(changes[0], "a context of 2048 tokens with the f16 KV cache");
        assert!(
            changes[1].starts_with("a context of 3")
                && changes[1].ends_with("with a q8_0 KV cache"),
            "{changes:?}"
        );
        assert_eq!(changes[2], "2 sessions of 4096 tokens");
        for a in &alts {
            assert!(a.plan.check().is_ok(), "{} does not fit", a.change);
            assert!(a.plan.total() <= p.budget.unwrap());
        }
        let err = p.check().unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "2 sessions of 4096 tokens ({} planned)",
                human_bytes(alts[2].plan.total())
            )),
            "{err}"
        );

        // Room for less than one session: fewer sessions would not fit, so it is not
        // suggested (it used to be, unconditionally).
        let p = four(fixed + per_session - 1);
        let changes: Vec<String> = p.alternatives().into_iter().map(|a| a.change).collect();
        assert!(
            !changes.iter().any(|c| c.contains("session")),
            "{changes:?}"
        );
        assert!(!changes.is_empty());
        assert!(!p.check().unwrap_err().to_string().contains("session"));

        // A q8_0 cache alone makes it fit: said as such, keeping the context.
        let q8 = MemoryPlan {
            sessions: 1,
            ..plan(Some(fixed + 56_576 * 4096))
        };
        let alts = q8.alternatives();
        assert!(
            alts.iter().any(
                |a| a.change == "a q8_0 KV cache at the same 4096-token context"
                    && a.plan.check().is_ok()
            ),
            "{alts:?}"
        );

        // Nothing but the weights fits.
        let tight = four(fixed + 100 * 106_496);
        assert!(tight.alternatives().is_empty());
        let err = tight.check().unwrap_err().to_string();
        assert!(
            err.contains("no context of 256 tokens or more fits"),
            "{err}"
        );
        // Fitting plans have nothing to suggest.
        assert!(plan(None).alternatives().is_empty());
        assert!(plan(Some(4 << 30)).alternatives().is_empty());
    }
}

//! Choosing the next token from the logits, as llama.cpp's default sampler chain does:
//! penalties (repetition over the last N tokens, presence, frequency), then top-k, top-p,
//! min-p, temperature, and a draw from a seeded generator. Temperature 0 is greedy.
//!
//! Everything the sampler needs is allocated in [`Sampler::new`] (candidate list, per-token
//! counts, the window of recent tokens); [`Sampler::sample`] allocates nothing.

use crate::rng::SplitMix64;

/// How to sample. The defaults are Mistral's recommendation for Ministral 3 Instruct
/// (temperature 0.15) with every other filter off.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (0: off).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p` (1: off).
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one (0: off).
    pub min_p: f32,
    /// Divide positive (multiply negative) logits of recently seen tokens (1: off).
    pub repeat_penalty: f32,
    /// How many recent tokens the penalties look at.
    pub repeat_last_n: usize,
    /// Subtracted once from tokens seen in the window (OpenAI's `presence_penalty`).
    pub presence_penalty: f32,
    /// Subtracted per occurrence in the window (OpenAI's `frequency_penalty`).
    pub frequency_penalty: f32,
    /// Seed of the generator: the same seed, prompt and parameters give the same text.
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.15,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

/// Why sampling parameters were refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplingError {
    #[error("{name} = {value} is out of range ({range})")]
    OutOfRange {
        name: &'static str,
        value: String,
        range: &'static str,
    },
}

impl SamplingParams {
    /// Checks every parameter's range (OpenAI's ranges where it defines them).
    pub fn validate(&self) -> Result<(), SamplingError> {
        let bad = |name, value: f32, range| {
            Err(SamplingError::OutOfRange {
                name,
                value: value.to_string(),
                range,
            })
        };
        if !(0.0..=2.0).contains(&self.temperature) {
            return bad("temperature", self.temperature, "0 to 2");
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", self.top_p, "above 0, at most 1");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "0 to 1");
        }
        if !(self.repeat_penalty > 0.0 && self.repeat_penalty <= 10.0) {
            return bad("repeat_penalty", self.repeat_penalty, "above 0, at most 10");
        }
        if !(-2.0..=2.0).contains(&self.presence_penalty) {
            return bad("presence_penalty", self.presence_penalty, "-2 to 2");
        }
        if !(-2.0..=2.0).contains(&self.frequency_penalty) {
            return bad("frequency_penalty", self.frequency_penalty, "-2 to 2");
        }
        if self.repeat_last_n > 1 << 16 {
            return Err(SamplingError::OutOfRange {
                name: "repeat_last_n",
                value: self.repeat_last_n.to_string(),
                range: "0 to 65536",
            });
        }
        Ok(())
    }

    fn penalties_on(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.presence_penalty != 0.0
                || self.frequency_penalty != 0.0)
    }
}

/// xoshiro256** seeded through SplitMix64: fast, small, and the same everywhere.
#[derive(Clone, Debug)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Rng {
        let mut sm = SplitMix64::new(seed);
        Rng([sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A sampler for one generation.
#[derive(Clone, Debug)]
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// (logit or probability, id), reused every step.
    candidates: Vec<(f32, u32)>,
    /// Occurrences of each id in `window`.
    counts: Vec<u32>,
    /// The last `repeat_last_n` tokens, a ring buffer.
    window: Vec<u32>,
    window_at: usize,
    window_len: usize,
}

impl Sampler {
    /// A sampler over `n_vocab` tokens. `params` must have been validated.
    pub fn new(params: SamplingParams, n_vocab: usize) -> Sampler {
        let penalties = params.penalties_on();
        Sampler {
            rng: Rng::new(params.seed),
            candidates: Vec::with_capacity(n_vocab),
            counts: if penalties {
                vec![0; n_vocab]
            } else {
                Vec::new()
            },
            window: if penalties {
                vec![0; params.repeat_last_n]
            } else {
                Vec::new()
            },
            window_at: 0,
            window_len: 0,
            params,
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Records a token of the context (prompt or generated) for the penalties.
    pub fn accept(&mut self, id: u32) {
        if self.window.is_empty() || id as usize >= self.counts.len() {
            return;
        }
        if self.window_len == self.window.len() {
            let old = self.window[self.window_at];
            self.counts[old as usize] -= 1;
        } else {
            self.window_len += 1;
        }
        self.window[self.window_at] = id;
        self.counts[id as usize] += 1;
        self.window_at = (self.window_at + 1) % self.window.len();
    }

    /// Picks the next token from `logits` (one per vocabulary entry; modified in place by
    /// the penalties).
    pub fn sample(&mut self, logits: &mut [f32]) -> u32 {
        let p = &self.params;
        if p.penalties_on() {
            for i in 0..self.window_len {
                let id = self.window[i] as usize;
                let n = self.counts[id];
                // Each distinct id once: only at its first occurrence in the ring.
                if n == 0 || self.window[..i].contains(&(id as u32)) {
                    continue;
                }
                let l = &mut logits[id];
                if p.repeat_penalty != 1.0 {
                    *l = if *l > 0.0 {
                        *l / p.repeat_penalty
                    } else {
                        *l * p.repeat_penalty
                    };
                }
                *l -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
        if p.temperature <= 0.0 {
            return argmax(logits);
        }

        let c = &mut self.candidates;
        c.clear();
        c.extend(logits.iter().enumerate().map(|(i, &l)| (l, i as u32)));
        let by_logit = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0);
        if p.top_k > 0 && p.top_k < c.len() {
            c.select_nth_unstable_by(p.top_k - 1, by_logit);
            c.truncate(p.top_k);
        }
        // Probabilities before temperature, for top-p and min-p (llama.cpp's order).
        let filters = p.top_p < 1.0 || p.min_p > 0.0;
        if filters {
            c.sort_unstable_by(by_logit);
            softmax_in_place(c, 1.0);
            if p.top_p < 1.0 {
                let mut cum = 0.0f32;
                let mut keep = c.len();
                for (i, &(pr, _)) in c.iter().enumerate() {
                    cum += pr;
                    if cum >= p.top_p {
                        keep = i + 1;
                        break;
                    }
                }
                c.truncate(keep.max(1));
            }
            if p.min_p > 0.0 {
                let floor = c[0].0 * p.min_p;
                let keep = c.iter().take_while(|x| x.0 >= floor).count();
                c.truncate(keep.max(1));
            }
            // Back to logits for the temperature.
            for x in c.iter_mut() {
                x.0 = logits[x.1 as usize];
            }
        }
        softmax_in_place(c, p.temperature);
        let mut u = self.rng.unit() as f32;
        for &(pr, id) in c.iter() {
            if u < pr {
                return id;
            }
            u -= pr;
        }
        // Rounding left a sliver: the last candidate takes it.
        c.last().map_or(0, |x| x.1)
    }
}

/// Turns `(logit, id)` pairs into probabilities `softmax(logit / temperature)`.
fn softmax_in_place(c: &mut [(f32, u32)], temperature: f32) {
    let max = c.iter().fold(f32::NEG_INFINITY, |m, x| m.max(x.0));
    let mut sum = 0.0f32;
    for x in c.iter_mut() {
        x.0 = ((x.0 - max) / temperature).exp();
        sum += x.0;
    }
    for x in c.iter_mut() {
        x.0 /= sum;
    }
}

/// Index of the largest logit (the first, on ties), as llama.cpp's greedy sampler.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in logits.iter().enumerate() {
        if v > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SamplingParams {
        SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn temperature_zero_is_argmax() {
        let mut s = Sampler::new(
            SamplingParams {
                temperature: 0.0,
                ..params()
            },
            4,
        );
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.9, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 17) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(SamplingParams { seed, ..params() }, 100);
            (0..50)
                .map(|_| s.sample(&mut logits.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy() {
        let logits = [0.5, 2.0, 1.9, -3.0];
        for p in [
            SamplingParams {
                top_k: 1,
                ..params()
            },
            SamplingParams {
                top_p: 0.01,
                ..params()
            },
            SamplingParams {
                min_p: 0.99,
                ..params()
            },
        ] {
            let mut s = Sampler::new(p.clone(), 4);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut logits.clone()), 1, "{p:?}");
            }
        }
    }

    #[test]
    fn frequencies_follow_the_softmax() {
        // logits ln(1), ln(3): token 1 should come up ~75% of the time.
        let mut s = Sampler::new(params(), 2);
        let n = 20_000;
        let ones = (0..n)
            .filter(|_| s.sample(&mut [0.0, 3f32.ln()]) == 1)
            .count();
        let frac = ones as f64 / f64::from(n);
        assert!((frac - 0.75).abs() < 0.02, "{frac}");
    }

    #[test]
    fn penalties_push_down_recent_tokens() {
        let p = SamplingParams {
            temperature: 0.0,
            repeat_penalty: 2.0,
            frequency_penalty: 0.5,
            presence_penalty: 0.25,
            repeat_last_n: 3,
            ..params()
        };
        let mut s = Sampler::new(p, 3);
        for id in [1, 1, 2] {
            s.accept(id);
        }
        let mut logits = [1.0, 2.0, -1.0];
        assert_eq!(s.sample(&mut logits), 0);
        // id 1: 2.0 / 2 - (2 * 0.5 + 0.25) = -0.25; id 2: -1 * 2 - (0.5 + 0.25) = -2.75
        assert_eq!(logits, [1.0, -0.25, -2.75]);
        // The window slides: after three more zeros, nothing but 0 is penalized.
        for _ in 0..3 {
            s.accept(0);
        }
        let mut logits = [1.0, 2.0, -1.0];
        s.sample(&mut logits);
        assert_eq!(logits, [1.0 / 2.0 - (3.0 * 0.5 + 0.25), 2.0, -1.0]);
    }

    #[test]
    fn parameters_are_range_checked() {
        assert!(SamplingParams::default().validate().is_ok());
        let refused = |p: SamplingParams, field: &str| {
            let r = p.validate();
            assert!(
                matches!(&r, Err(SamplingError::OutOfRange { name, .. }) if *name == field),
                "{r:?} is not {field} out of range"
            );
        };
        refused(
            SamplingParams {
                temperature: -1.0,
                ..params()
            },
            "temperature",
        );
        refused(
            SamplingParams {
                temperature: f32::NAN,
                ..params()
            },
            "temperature",
        );
        refused(
            SamplingParams {
                top_p: 0.0,
                ..params()
            },
            "top_p",
        );
        refused(
            SamplingParams {
                repeat_last_n: 1 << 20,
                ..params()
            },
            "repeat_last_n",
        );
    }
}

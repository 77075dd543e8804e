//! Rotary position embedding in GGML's "normal" mode (adjacent pairs `(2i, 2i+1)` rotate
//! together), with linear or YaRN frequency scaling, exactly as
//! `docs/ministral3.md` and GGML's `ggml_rope_cache_init`/`rope_yarn` compute it.
//!
//! Angles are produced the way GGML does (in f32, `theta *= theta_scale` from pair to pair)
//! rather than with a fresh `powf` per pair, because the goal is to agree with llama.cpp.

/// How the rotary frequencies are scaled for contexts longer than training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions are divided by `factor`.
    Linear {
        factor: f32,
    },
    /// YaRN: interpolate low frequencies by `1/factor`, keep high ones, ramp between the
    /// dimensions where a wavelength spans `beta_fast` and `beta_slow` rotations of the
    /// original context.
    Yarn {
        factor: f32,
        original_context: u32,
        beta_fast: f32,
        beta_slow: f32,
    },
}

/// RoPE configuration of a model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeParams {
    /// Rotated dimensions per head (`rope.dimension_count`; usually the head size).
    pub n_dims: usize,
    /// `rope.freq_base`.
    pub freq_base: f32,
    pub scaling: RopeScaling,
}

impl RopeParams {
    /// GGML's `ggml_rope_yarn_corr_dims`: the (low, high) pair indices of the ramp.
    pub fn yarn_corr_dims(&self) -> Option<(f32, f32)> {
        let RopeScaling::Yarn {
            original_context,
            beta_fast,
            beta_slow,
            ..
        } = self.scaling
        else {
            return None;
        };
        let n_dims = self.n_dims as f32;
        let corr_dim = |n_rot: f32| {
            n_dims * (original_context as f32 / (n_rot * 2.0 * std::f32::consts::PI)).ln()
                / (2.0 * self.freq_base.ln())
        };
        let low = corr_dim(beta_fast).floor().max(0.0);
        let high = corr_dim(beta_slow).ceil().min(n_dims - 1.0);
        Some((low, high))
    }

    /// The cosines and sines of the `n_dims / 2` rotation angles at `pos`.
    pub fn cos_sin(&self, pos: u32, cos: &mut [f32], sin: &mut [f32]) {
        let pairs = self.n_dims / 2;
        assert!(cos.len() == pairs && sin.len() == pairs);
        let theta_scale = self.freq_base.powf(-2.0 / self.n_dims as f32);
        let (freq_scale, ramp) = match self.scaling {
            RopeScaling::None => (1.0, None),
            RopeScaling::Linear { factor } => (1.0 / factor, None),
            RopeScaling::Yarn { factor, .. } => (1.0 / factor, self.yarn_corr_dims()),
        };
        let mut theta_extrap = pos as f32;
        for i in 0..pairs {
            let theta_interp = freq_scale * theta_extrap;
            let theta = match ramp {
                None => theta_interp,
                Some((low, high)) => {
                    let y = (i as f32 - low) / (high - low).max(0.001);
                    let mix = 1.0 - y.clamp(0.0, 1.0);
                    theta_interp * (1.0 - mix) + theta_extrap * mix
                }
            };
            cos[i] = theta.cos();
            sin[i] = theta.sin();
            theta_extrap *= theta_scale;
        }
    }
}

/// Rotates each head of `x` (`n_heads * head_dim` values) by the angles of one position:
/// pairs `(2i, 2i+1)` for `i < cos.len()`; dimensions past `2 * cos.len()` are untouched.
pub fn apply_rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32]) {
    assert!(head_dim > 0 && x.len().is_multiple_of(head_dim) && 2 * cos.len() <= head_dim);
    assert_eq!(cos.len(), sin.len());
    for head in x.chunks_exact_mut(head_dim) {
        for (i, (&c, &s)) in cos.iter().zip(sin).enumerate() {
            let a = head[2 * i];
            let b = head[2 * i + 1];
            head[2 * i] = a * c - b * s;
            head[2 * i + 1] = a * s + b * c;
        }
    }
}

/// Precomputed angles for positions `0..n_positions`.
#[derive(Clone, Debug)]
pub struct RopeTable {
    pairs: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(params: &RopeParams, n_positions: u32) -> RopeTable {
        let pairs = params.n_dims / 2;
        let n = pairs * n_positions as usize;
        let mut cos = vec![0.0; n];
        let mut sin = vec![0.0; n];
        for (pos, (c, s)) in cos
            .chunks_exact_mut(pairs.max(1))
            .zip(sin.chunks_exact_mut(pairs.max(1)))
            .enumerate()
        {
            params.cos_sin(pos as u32, c, s);
        }
        RopeTable { pairs, cos, sin }
    }

    /// Number of positions in the table.
    pub fn len(&self) -> usize {
        self.cos.len().checked_div(self.pairs).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.cos.is_empty()
    }

    /// The (cos, sin) rows of `pos`; panics past the table (callers bound positions by the
    /// context they allocated the table for).
    pub fn at(&self, pos: usize) -> (&[f32], &[f32]) {
        let r = pos * self.pairs..(pos + 1) * self.pairs;
        (&self.cos[r.clone()], &self.sin[r])
    }

    /// Rotates every head of `x` to position `pos`.
    pub fn apply(&self, x: &mut [f32], head_dim: usize, pos: usize) {
        let (c, s) = self.at(pos);
        apply_rope(x, head_dim, c, s);
    }
}

/// Ministral 3's attention temperature: queries are multiplied by
/// `1 + beta * ln(1 + floor(pos / original_context))`.
pub fn attention_temperature(pos: u32, original_context: u32, beta: f32) -> f32 {
    1.0 + beta * (1.0 + (pos / original_context.max(1)) as f32).ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ministral_3b() -> RopeParams {
        RopeParams {
            n_dims: 128,
            freq_base: 1e6,
            scaling: RopeScaling::Yarn {
                factor: 16.0,
                original_context: 16384,
                beta_fast: 32.0,
                beta_slow: 1.0,
            },
        }
    }

    #[test]
    fn yarn_ramp_of_the_3b_is_20_to_37() {
        // docs/ministral3.md: "For the 3B, low = 20 and high = 37".
        assert_eq!(ministral_3b().yarn_corr_dims(), Some((20.0, 37.0)));
    }

    #[test]
    fn yarn_blends_interpolation_and_extrapolation() {
        let p = ministral_3b();
        let mut c = vec![0.0; 64];
        let mut s = vec![0.0; 64];
        let pos = 1000u32;
        p.cos_sin(pos, &mut c, &mut s);
        let theta = |i: usize| s[i].atan2(c[i]);
        // Pair 0 is below `low`: pure extrapolation, theta = pos (mod 2 pi).
        let want0 = (pos as f32).sin().atan2((pos as f32).cos());
        assert!((theta(0) - want0).abs() < 1e-3);
        // Pair 63 is above `high`: pure interpolation, theta = pos * base^(-126/128) / 16.
        let want63 = pos as f32 * 1e6f32.powf(-126.0 / 128.0) / 16.0;
        assert!(
            (theta(63) - want63).abs() < 1e-5,
            "{} vs {want63}",
            theta(63)
        );
    }

    #[test]
    fn rotation_preserves_norm_and_position_zero_is_identity() {
        let p = ministral_3b();
        let table = RopeTable::new(&p, 8);
        let orig: Vec<f32> = (0..256).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut x = orig.clone();
        table.apply(&mut x, 128, 0);
        assert_eq!(x, orig);
        table.apply(&mut x, 128, 7);
        let n0: f32 = orig.iter().map(|v| v * v).sum();
        let n1: f32 = x.iter().map(|v| v * v).sum();
        assert!((n0 - n1).abs() < 1e-3 * n0);
    }

    #[test]
    fn temperature_steps_at_multiples_of_the_original_context() {
        assert_eq!(attention_temperature(0, 64, 0.1), 1.0);
        assert_eq!(attention_temperature(63, 64, 0.1), 1.0);
        assert!((attention_temperature(64, 64, 0.1) - (1.0 + 0.1 * 2f32.ln())).abs() < 1e-7);
    }
}

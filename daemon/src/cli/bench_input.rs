//! What the `bench` measurements share: the synthetic token ids they feed the model and the
//! statistics they report.

/// Mean and sample standard deviation.
pub(crate) fn stats(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = if xs.len() > 1 {
        xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (mean, var.sqrt())
}

/// Random ordinary token ids (above the control range) of an `n_vocab` vocabulary, the
/// same sequence every run.
pub(crate) fn random_ids(n_vocab: usize) -> impl FnMut() -> u32 {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (1000 + state % (n_vocab.saturating_sub(1000).max(1) as u64)) as u32 % n_vocab as u32
    }
}

//! Convergence care (the brief's FAQ): divergence, a discriminator that wins outright, and
//! DCGAN mode collapse.

use serde::{Deserialize, Serialize};

/// What the monitor remembers across steps (saved in checkpoints).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Consecutive steps with a near-zero loss, per discriminator.
    pub d_wins_streak: Vec<u64>,
    /// Whether the current streak was already reported, per discriminator.
    pub d_wins_warned: Vec<bool>,
    /// Step of the last checkpoint written with finite weights.
    pub last_good: Option<u64>,
    /// Consecutive DCGAN sample checks with collapsed diversity.
    #[serde(default)]
    pub collapse_streak: u32,
}

/// Tracks the discriminators' losses and reports "D wins" once per episode.
#[derive(Debug, Clone)]
pub struct Monitor {
    pub state: MonitorState,
    /// Per-term D loss under which D counts as winning.
    pub threshold: f64,
    /// Steps of winning before the warning.
    pub patience: u64,
}

impl Monitor {
    pub fn new(n_discriminators: usize, threshold: f64, patience: u64) -> Self {
        Self {
            state: MonitorState {
                d_wins_streak: vec![0; n_discriminators],
                d_wins_warned: vec![false; n_discriminators],
                last_good: None,
                collapse_streak: 0,
            },
            threshold,
            patience: patience.max(1),
        }
    }

    /// Feeds one step's per-term D losses (one per discriminator, each the mean of its real
    /// and fake terms); returns a warning when a discriminator has just won for `patience`
    /// steps in a row.
    pub fn observe_d(&mut self, names: &[&str], d_losses: &[f64]) -> Option<String> {
        let mut out = None;
        let s = &mut self.state;
        s.d_wins_streak.resize(d_losses.len(), 0);
        s.d_wins_warned.resize(d_losses.len(), false);
        for (i, &l) in d_losses.iter().enumerate() {
            if l < self.threshold {
                s.d_wins_streak[i] += 1;
            } else {
                s.d_wins_streak[i] = 0;
                s.d_wins_warned[i] = false;
            }
            if s.d_wins_streak[i] >= self.patience && !s.d_wins_warned[i] {
                s.d_wins_warned[i] = true;
                out = Some(format!(
                    "D wins: {} loss has stayed below {} for {} steps, so the generator gets \
                     almost no gradient (try a lower D learning rate, more data or \
                     --color-jitter, or a smaller discriminator)",
                    names.get(i).copied().unwrap_or("D"),
                    self.threshold,
                    self.patience
                ));
            }
        }
        out
    }
}

/// Mean pairwise RMS distance between the images of a batch (`n` images of `dim` values
/// each, row-major). 0 when all images are equal; the measure of diversity used for the mode
/// collapse warning.
pub fn diversity(values: &[f32], n: usize) -> f64 {
    if n < 2 || values.len() < n {
        return 0.0;
    }
    let dim = values.len() / n;
    let rows: Vec<&[f32]> = (0..n).map(|i| &values[i * dim..(i + 1) * dim]).collect();
    let mut total = 0.0;
    let mut pairs = 0usize;
    for i in 0..n {
        for j in i + 1..n {
            let d2: f64 = rows[i]
                .iter()
                .zip(rows[j])
                .map(|(a, b)| {
                    let d = (*a - *b) as f64;
                    d * d
                })
                .sum();
            total += (d2 / dim as f64).sqrt();
            pairs += 1;
        }
    }
    total / pairs as f64
}

/// Below this fraction of the real images' diversity, DCGAN samples count as collapsed.
pub const COLLAPSE_RATIO: f64 = 0.25;

/// The collapse warning, if the samples' diversity is under [`COLLAPSE_RATIO`] of the real
/// images'.
pub fn collapse_warning(sample_div: f64, real_div: f64) -> Option<String> {
    (real_div > 1e-6 && sample_div < COLLAPSE_RATIO * real_div).then(|| {
        format!(
            "mode collapse: samples at the fixed noise batch are {:.0}% as diverse as real \
             images (diversity {sample_div:.3} vs {real_div:.3}); the generator is producing \
             nearly the same image for every z (try a lower learning rate, a different seed, or \
             more varied data)",
            100.0 * sample_div / real_div
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn d_wins_is_reported_once_per_episode() {
        let mut m = Monitor::new(2, 0.01, 3);
        let names = ["D_A", "D_B"];
        let mut warnings = Vec::new();
        for step in 0..10 {
            let a = if (2..8).contains(&step) { 0.001 } else { 0.3 };
            if let Some(w) = m.observe_d(&names, &[a, 0.4]) {
                warnings.push((step, w));
            }
        }
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(warnings[0].0, 4);
        assert!(warnings[0].1.contains("D_A"));
        // A new episode warns again.
        for _ in 0..3 {
            m.observe_d(&names, &[0.001, 0.4]);
        }
        assert!(m.state.d_wins_warned[0]);
    }

    #[test]
    fn diversity_separates_identical_from_varied_batches() {
        let same = [0.5f32; 4 * 10];
        assert_eq!(diversity(&same, 4), 0.0);
        let mut varied = Vec::new();
        for i in 0..4 {
            varied.extend(std::iter::repeat_n(i as f32 / 4.0, 10));
        }
        // Pairwise distances 0.25, 0.5, 0.75 (×2, ×2, ×1 ...) → mean 5/12.
        let d = diversity(&varied, 4);
        assert!((d - 5.0 / 12.0).abs() < 1e-6, "{d}");
        assert!(collapse_warning(0.05, 0.5).is_some());
        assert!(collapse_warning(0.3, 0.5).is_none());
        assert!(collapse_warning(0.0, 0.0).is_none());
    }
}

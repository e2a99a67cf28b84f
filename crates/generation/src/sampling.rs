//! Reproducible sampling: a seeded generator and multinomial draws from processed scores.
//!
//! The generator is xoshiro256++ seeded through SplitMix64, so a seed gives the same ids on every platform and
//! backend (the scores being equal). It is not torch's generator: sampled ids differ from transformers' for
//! the same seed, while their distribution is the same.

use std::hash::{BuildHasher, Hasher};

use crate::processors::softmax;

/// xoshiro256++: small, fast, and the same sequence everywhere for a seed.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`.
    pub fn seed_from(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            s: [next(), next(), next(), next()],
        }
    }

    /// A generator seeded from the process's hash randomness and the clock.
    pub fn from_entropy() -> Self {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(nanos);
        Self::seed_from(hasher.finish())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Draws one index with probability `probs[i] / sum(probs)`; `None` when every probability is 0.
pub fn draw(probs: &[f32], rng: &mut Rng) -> Option<usize> {
    let total: f64 = probs.iter().map(|&p| f64::from(p.max(0.0))).sum();
    if total.is_nan() || total <= 0.0 {
        return None;
    }
    let target = rng.next_f64() * total;
    let mut cumulative = 0.0;
    let mut last = None;
    for (i, &p) in probs.iter().enumerate() {
        if p <= 0.0 {
            continue;
        }
        cumulative += f64::from(p);
        last = Some(i);
        if target < cumulative {
            return Some(i);
        }
    }
    // Rounding left the target past the last partial sum: the last token with mass.
    last
}

/// Samples one token from processed scores (softmax first); `None` when every score is `-inf`.
pub fn sample(scores: &[f32], rng: &mut Rng) -> Option<usize> {
    draw(&softmax(scores), rng)
}

/// Samples `k` distinct tokens from processed scores, each draw renormalised over what is left (torch's
/// `multinomial` without replacement). `None` when fewer than `k` tokens have a non-zero probability.
pub fn sample_distinct(scores: &[f32], k: usize, rng: &mut Rng) -> Option<Vec<usize>> {
    let mut probs = softmax(scores);
    if probs.iter().filter(|&&p| p > 0.0).count() < k {
        return None;
    }
    let mut out = Vec::with_capacity(k);
    for _ in 0..k {
        let i = draw(&probs, rng)?;
        probs[i] = 0.0;
        out.push(i);
    }
    Some(out)
}

/// Index of the largest score, the first one on ties (torch's `argmax`).
pub fn argmax(scores: &[f32]) -> usize {
    let mut best = 0;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_repeat_and_differ() {
        let a: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seed_from(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..4)
            .map({
                let mut r = Rng::seed_from(7);
                move |_| r.next_u64()
            })
            .collect();
        let c = Rng::seed_from(8).next_u64();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        let u = Rng::seed_from(1).next_f64();
        assert!((0.0..1.0).contains(&u));
    }

    #[test]
    fn draws_skip_zero_mass_and_fail_on_none() {
        let mut rng = Rng::seed_from(3);
        for _ in 0..1000 {
            let i = draw(&[0.0, 0.25, 0.0, 0.75], &mut rng).unwrap();
            assert!(i == 1 || i == 3);
        }
        assert_eq!(draw(&[0.0, 0.0], &mut rng), None);
        assert_eq!(sample(&[f32::NEG_INFINITY; 3], &mut rng), None);
        let picked = sample_distinct(&[0.0, 1.0, f32::NEG_INFINITY, 2.0], 3, &mut rng).unwrap();
        let mut sorted = picked.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, [0, 1, 3]);
        assert_eq!(
            sample_distinct(&[0.0, f32::NEG_INFINITY], 2, &mut rng),
            None
        );
    }

    #[test]
    fn argmax_takes_the_first_of_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 3]), 0);
    }
}

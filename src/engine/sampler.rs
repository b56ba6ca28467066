//! Choosing the next token: mlx-knife's defaults (temperature 0.7, top-p 0.9, repetition
//! penalty 1.1 over the last 20 tokens); temperature 0 is greedy. The server adds OpenAI's
//! frequency and presence penalties, which count the tokens the sampler itself chose.

use std::collections::HashMap;

/// How tokens are chosen.
#[derive(Debug, Clone)]
pub struct SamplerOptions {
    pub temperature: f32,
    pub top_p: f32,
    pub repetition_penalty: f32,
    /// How many recent tokens the penalty looks at.
    pub repetition_window: usize,
    /// OpenAI's: subtracted once per earlier occurrence of a token in the generated text.
    pub frequency_penalty: f32,
    /// OpenAI's: subtracted once from every token the generated text already has.
    pub presence_penalty: f32,
    pub seed: u64,
}

impl SamplerOptions {
    /// OpenAI's defaults: temperature 1, top-p 1, no penalty of any kind.
    pub fn openai() -> SamplerOptions {
        SamplerOptions {
            temperature: 1.0,
            top_p: 1.0,
            repetition_penalty: 1.0,
            ..SamplerOptions::default()
        }
    }
}

impl Default for SamplerOptions {
    fn default() -> Self {
        SamplerOptions {
            temperature: 0.7,
            top_p: 0.9,
            repetition_penalty: 1.1,
            repetition_window: 20,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: 0,
        }
    }
}

pub struct Sampler {
    opts: SamplerOptions,
    state: u64,
    probs: Vec<(f32, u32)>,
    scratch: Vec<f32>,
    /// How often each token was chosen (for the frequency and presence penalties).
    chosen: HashMap<u32, u32>,
}

impl Sampler {
    pub fn new(opts: SamplerOptions) -> Sampler {
        Sampler {
            state: opts.seed ^ 0x9E37_79B9_7F4A_7C15,
            opts,
            probs: Vec::new(),
            scratch: Vec::new(),
            chosen: HashMap::new(),
        }
    }

    /// SplitMix64: a uniform f32 in [0, 1).
    fn uniform(&mut self) -> f32 {
        splitmix(&mut self.state)
    }

    /// The next token from `logits`, given the tokens so far (for the repetition penalty).
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let id = self.choose(logits, history);
        if self.opts.frequency_penalty != 0.0 || self.opts.presence_penalty != 0.0 {
            *self.chosen.entry(id).or_default() += 1;
        }
        id
    }

    fn choose(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        let l = &mut self.scratch;
        l.clear();
        l.extend_from_slice(logits);
        let p = self.opts.repetition_penalty;
        if p != 1.0 && p > 0.0 {
            let window = &history[history.len().saturating_sub(self.opts.repetition_window)..];
            for &t in window {
                if let Some(v) = l.get_mut(t as usize) {
                    *v = if *v < 0.0 { *v * p } else { *v / p };
                }
            }
        }
        let (freq, presence) = (self.opts.frequency_penalty, self.opts.presence_penalty);
        for (&t, &n) in &self.chosen {
            if let Some(v) = l.get_mut(t as usize) {
                *v -= freq * n as f32 + presence;
            }
        }
        if self.opts.temperature <= 0.0 {
            return argmax(l);
        }
        let inv_t = 1.0 / self.opts.temperature;
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if self.opts.top_p >= 1.0 {
            // The whole distribution: no order needed (sorting 150k logits per token would
            // cost more than a decode step of a small model).
            let sum: f32 = l.iter().map(|&v| ((v - max) * inv_t).exp()).sum();
            let target = splitmix(&mut self.state) * sum;
            let mut acc = 0.0;
            let mut last = 0;
            for (i, &v) in l.iter().enumerate() {
                let e = ((v - max) * inv_t).exp();
                if e > 0.0 {
                    last = i;
                }
                acc += e;
                if acc > target {
                    return i as u32;
                }
            }
            return last as u32;
        }
        self.probs.clear();
        let mut sum = 0.0;
        for (i, &v) in l.iter().enumerate() {
            let e = ((v - max) * inv_t).exp();
            sum += e;
            self.probs.push((e, i as u32));
        }
        self.probs
            .sort_unstable_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        // Top-p: the smallest prefix whose mass reaches p (at least one token).
        let mut kept = 0.0;
        let mut n = 0;
        for &(e, _) in &self.probs {
            kept += e;
            n += 1;
            if kept / sum >= self.opts.top_p {
                break;
            }
        }
        let target = self.uniform() * kept;
        let mut acc = 0.0;
        for &(e, id) in &self.probs[..n] {
            acc += e;
            if acc > target {
                return id;
            }
        }
        self.probs[n - 1].1
    }
}

/// A SplitMix64 step on `state`: a uniform f32 in [0, 1).
fn splitmix(state: &mut u64) -> f32 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f32 / (1u64 << 24) as f32
}

/// The first index of the largest value.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_penalty_and_top_p() {
        let mut s = Sampler::new(SamplerOptions {
            temperature: 0.0,
            repetition_penalty: 1.0,
            ..SamplerOptions::default()
        });
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[]), 1);
        // The penalty divides a positive logit of a recent token: 2.0 / 1.1 < 1.9.
        let mut s = Sampler::new(SamplerOptions {
            temperature: 0.0,
            ..SamplerOptions::default()
        });
        assert_eq!(s.sample(&[0.1, 2.0, 1.9], &[1]), 2);
        // top-p 0.5 over a dominant token always picks it; same seed, same choices.
        let opts = SamplerOptions {
            temperature: 1.0,
            top_p: 0.5,
            repetition_penalty: 1.0,
            seed: 7,
            ..SamplerOptions::default()
        };
        let mut s = Sampler::new(opts.clone());
        for _ in 0..50 {
            assert_eq!(s.sample(&[5.0, 0.0, 0.0, 0.0], &[]), 0);
        }
        let flat = [1.0f32; 8];
        let a: Vec<u32> = {
            let mut s = Sampler::new(SamplerOptions {
                top_p: 1.0,
                ..opts.clone()
            });
            (0..20).map(|_| s.sample(&flat, &[])).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(SamplerOptions { top_p: 1.0, ..opts });
            (0..20).map(|_| s.sample(&flat, &[])).collect()
        };
        assert_eq!(a, b);
        assert!(a.iter().any(|&t| t != a[0]), "a flat distribution varies");
    }

    #[test]
    fn the_whole_distribution_is_sampled_in_proportion() {
        // top-p 1 (no sort): p = 1/4, 3/4, and a token of probability ~0 never drawn.
        let mut s = Sampler::new(SamplerOptions {
            seed: 3,
            ..SamplerOptions::openai()
        });
        let logits = [0.0, 3f32.ln(), -60.0];
        let mut counts = [0usize; 3];
        for _ in 0..8000 {
            counts[s.sample(&logits, &[]) as usize] += 1;
        }
        assert!((5700..6300).contains(&counts[1]), "{counts:?}");
        assert_eq!(counts[2], 0, "{counts:?}");
    }

    #[test]
    fn frequency_and_presence_penalties_count_the_chosen_tokens() {
        let greedy = SamplerOptions {
            temperature: 0.0,
            ..SamplerOptions::openai()
        };
        // Frequency 0.6: token 0 (3.0) wins, then 2.4 < 2.5 lets token 1 in, then 1.9 vs
        // 2.4: token 0 again, then 1.8 vs 1.9: token 1.
        let mut s = Sampler::new(SamplerOptions {
            frequency_penalty: 0.6,
            ..greedy.clone()
        });
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&[3.0, 2.5, 0.0], &[])).collect();
        assert_eq!(picks, [0, 1, 0, 1]);
        // Presence 1.0 subtracts once however often: 3.0 -> 2.0 < 2.5, then 2.0 vs 1.5: 0 and 0.
        let mut s = Sampler::new(SamplerOptions {
            presence_penalty: 1.0,
            ..greedy.clone()
        });
        let picks: Vec<u32> = (0..4).map(|_| s.sample(&[3.0, 2.5, 0.0], &[])).collect();
        assert_eq!(picks, [0, 1, 0, 0]);
        // Off (OpenAI's default): the same token every time, whatever the history.
        let mut s = Sampler::new(greedy);
        let picks: Vec<u32> = (0..4)
            .map(|_| s.sample(&[3.0, 2.5, 0.0], &[0, 0, 0]))
            .collect();
        assert_eq!(picks, [0, 0, 0, 0]);
    }
}

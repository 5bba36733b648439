//! How a sequence picks its tokens: llama.cpp's sampler chain built from a request's
//! temperature, top-p, seed and [`crate::Shaping`].

use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

/// How a sequence picks its tokens.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sampling {
    /// 0 = greedy (always the most likely token).
    pub temperature: f32,
    pub top_p: f32,
    pub seed: u32,
    pub shaping: crate::Shaping,
    /// The vocabulary's size (penalties and biases are per token).
    pub n_vocab: i32,
}

/// Tokens of the recent text the repetition penalties look at (llama.cpp's default).
const PENALTY_LAST_N: i32 = 64;

impl Sampling {
    /// llama.cpp's order: biases, penalties, top-k, top-p, min-p, temperature, then the draw
    /// (greedy takes the first three and the most likely token). Without any shaping a
    /// greedy sampler is the bare greedy one, as before.
    pub(crate) fn sampler(&self) -> LlamaSampler {
        let shaping = &self.shaping;
        let mut chain = Vec::new();
        if !shaping.logit_bias.is_empty() {
            let biases: Vec<LlamaLogitBias> =
                shaping.logit_bias.iter().map(|&(t, b)| LlamaLogitBias::new(LlamaToken(t), b)).collect();
            chain.push(LlamaSampler::logit_bias(self.n_vocab, &biases));
        }
        if shaping.penalizes() {
            chain.push(LlamaSampler::penalties(
                self.n_vocab,
                PENALTY_LAST_N,
                shaping.repeat_penalty.unwrap_or(1.0),
                shaping.frequency_penalty.unwrap_or(0.0),
                shaping.presence_penalty.unwrap_or(0.0),
            ));
        }
        if self.temperature <= 0.0 {
            if chain.is_empty() {
                return LlamaSampler::greedy();
            }
            chain.push(LlamaSampler::greedy());
            return LlamaSampler::chain_simple(chain);
        }
        if let Some(k) = shaping.top_k.filter(|&k| k > 0) {
            chain.push(LlamaSampler::top_k(i32::try_from(k).unwrap_or(i32::MAX)));
        }
        if self.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(self.top_p, 1));
        }
        if let Some(p) = shaping.min_p.filter(|&p| p > 0.0) {
            chain.push(LlamaSampler::min_p(p, 1));
        }
        chain.push(LlamaSampler::temp(self.temperature));
        chain.push(LlamaSampler::dist(self.seed));
        LlamaSampler::chain_simple(chain)
    }
}

//! How a sequence picks its tokens: llama.cpp's sampler chain built from a request's
//! temperature, top-p, seed and [`crate::Shaping`].

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;

use crate::LlmError;
use crate::constraint::Constraint;

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

/// The log-probability of `chosen` under `logits` (a log-softmax of the model's raw logits, as
/// llama.cpp's server and llama-cpp-python report them: before biases, penalties or filters),
/// and the `top` most likely tokens with theirs, most likely first.
pub(crate) fn logprobs(logits: &[f32], chosen: usize, top: usize) -> (f32, Vec<(usize, f32)>) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let norm = f64::from(max) + sum.ln();
    let lp = |l: f32| (f64::from(l) - norm) as f32;
    let chosen_lp = logits.get(chosen).map_or(f32::NEG_INFINITY, |&l| lp(l));
    let top = top.min(logits.len());
    if top == 0 {
        // Only the chosen token: no index of the whole vocabulary per token.
        return (chosen_lp, Vec::new());
    }
    let mut best: Vec<usize> = (0..logits.len()).collect();
    if top < best.len() {
        best.select_nth_unstable_by(top - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    }
    best.truncate(top);
    best.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    (chosen_lp, best.into_iter().map(|t| (t, lp(logits[t]))).collect())
}

/// Samples from the tokens `constraint` allows only, then advances it past the choice. The
/// candidates are the allowed tokens with their logits, in token order — the same draw as the
/// full vocabulary with every other token at zero probability.
pub(crate) fn constrained_sample(
    model: &LlamaModel,
    context: &LlamaContext<'_>,
    at: i32,
    sampler: &mut LlamaSampler,
    constraint: &mut Constraint,
) -> Result<LlamaToken, LlmError> {
    let allowed = constraint.allowed()?;
    let logits = context.get_logits_ith(at);
    let mut candidates = Vec::with_capacity(allowed.num_set().min(logits.len()));
    allowed.iter_set_entries(|id| {
        if let (Some(&logit), Ok(token)) = (logits.get(id), i32::try_from(id)) {
            candidates.push(LlamaTokenData::new(LlamaToken(token), logit, 0.0));
        }
    });
    if candidates.is_empty() {
        return Err(LlmError::Grammar("the grammar allows no token of this model's vocabulary here".into()));
    }
    let mut array = LlamaTokenDataArray::new(candidates, false);
    array.apply_sampler(sampler);
    let token = array.selected_token().ok_or_else(|| LlmError::Engine("the sampler chose no token".into()))?;
    sampler.accept(token);
    // The end of the text is not part of the grammar's language: the scheduler ends there.
    if !model.vocab().is_eog(token) {
        constraint.advance(token.0.cast_unsigned())?;
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::logprobs;

    #[test]
    fn logprobs_are_a_log_softmax_with_the_top_tokens_first() {
        let logits = [1.0_f32, 3.0, 2.0, -1.0];
        let (chosen, top) = logprobs(&logits, 2, 2);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(chosen) - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((f64::from(top[0].1) - (3.0 - z.ln())).abs() < 1e-6);
        let total: f64 = (0..4).map(|i| f64::from(logprobs(&logits, i, 0).0).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        assert_eq!(logprobs(&logits, 0, 10).1.len(), 4);
    }
}

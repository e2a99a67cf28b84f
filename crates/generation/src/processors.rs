//! Logits processors with transformers' semantics, applied one row at a time on the host.
//!
//! Each processor turns the scores of one row (`[vocab]`, f32) in place, given the ids of that row so far. The
//! loops build them from a [`GenerationConfig`] in transformers' order: repetition penalty, no-repeat-ngram,
//! bad words, min length, min new tokens, any processors of the caller, then (sampling only) temperature,
//! top-k, top-p.
//!
//! ```
//! use blip2_generation::processors::{LogitsProcessor, RowIds, TopK};
//!
//! let mut scores = vec![0.5f32, 2.0, -1.0, 2.0];
//! TopK::new(1, 1).process(&RowIds::new(&[]), &mut scores);
//! // Ties with the k-th score are kept, as transformers keeps them.
//! assert_eq!(scores, [f32::NEG_INFINITY, 2.0, f32::NEG_INFINITY, 2.0]);
//! ```

use std::collections::BTreeSet;
use std::fmt;

use crate::GenerationConfig;

/// The ids a row holds so far: the prompt ids (left padding included), then the generated ones.
#[derive(Debug, Clone, Copy)]
pub struct RowIds<'a> {
    /// Prompt ids then generated ids.
    pub ids: &'a [u32],
    /// Leading positions that are padding (the repetition penalty ignores them).
    pub padding: usize,
}

impl<'a> RowIds<'a> {
    /// A row without padding.
    pub fn new(ids: &'a [u32]) -> Self {
        Self { ids, padding: 0 }
    }

    /// A row whose first `padding` ids are left padding.
    pub fn with_padding(ids: &'a [u32], padding: usize) -> Self {
        Self { ids, padding }
    }
}

/// Changes the scores of one row before a token is chosen.
pub trait LogitsProcessor: fmt::Debug + Send + Sync {
    /// Updates `scores` (`[vocab]`) in place for the row `row`.
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]);
}

/// `RepetitionPenaltyLogitsProcessor`: each token already in the row (padding excluded) has a positive score
/// divided by `penalty` and a negative one multiplied by it.
#[derive(Debug, Clone, Copy)]
pub struct RepetitionPenalty {
    penalty: f32,
}

impl RepetitionPenalty {
    /// A penalty above 1 discourages repeats; below 1 rewards them.
    pub fn new(penalty: f64) -> Self {
        Self {
            penalty: penalty as f32,
        }
    }
}

impl LogitsProcessor for RepetitionPenalty {
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        let seen: BTreeSet<u32> = row.ids[row.padding.min(row.ids.len())..]
            .iter()
            .copied()
            .collect();
        for id in seen {
            if let Some(s) = scores.get_mut(id as usize) {
                *s = if *s < 0.0 {
                    *s * self.penalty
                } else {
                    *s / self.penalty
                };
            }
        }
    }
}

/// `NoRepeatNGramLogitsProcessor`: a token that would complete an n-gram already present in the row (prompt
/// and padding included, as transformers) gets `-inf`.
#[derive(Debug, Clone, Copy)]
pub struct NoRepeatNGram {
    n: usize,
}

impl NoRepeatNGram {
    /// `n >= 1`.
    pub fn new(n: usize) -> Self {
        Self { n: n.max(1) }
    }
}

impl LogitsProcessor for NoRepeatNGram {
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        let ids = row.ids;
        let n = self.n;
        if ids.len() < n {
            return;
        }
        let prefix = &ids[ids.len() + 1 - n..];
        for window in ids.windows(n) {
            if &window[..n - 1] == prefix
                && let Some(s) = scores.get_mut(window[n - 1] as usize)
            {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// `NoBadWordsLogitsProcessor`: a one-token bad word is always banned; a longer one bans its last token when
/// the row ends with the rest. Bad words equal to a lone eos id are dropped, as transformers drops them.
#[derive(Debug, Clone)]
pub struct NoBadWords {
    singles: Vec<u32>,
    sequences: Vec<Vec<u32>>,
}

impl NoBadWords {
    /// The sequences to ban, and the eos ids (a bad word `[eos]` is not banned).
    pub fn new(bad_words_ids: &[Vec<u32>], eos_token_id: &[u32]) -> Self {
        let mut singles = Vec::new();
        let mut sequences = Vec::new();
        for word in bad_words_ids {
            match word.as_slice() {
                [] => {}
                [one] if eos_token_id.contains(one) => {}
                [one] => singles.push(*one),
                _ => sequences.push(word.clone()),
            }
        }
        Self { singles, sequences }
    }

    /// Every id the processor names (to check them against the vocabulary).
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.singles
            .iter()
            .copied()
            .chain(self.sequences.iter().flatten().copied())
    }
}

impl LogitsProcessor for NoBadWords {
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        for &id in &self.singles {
            if let Some(s) = scores.get_mut(id as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        for word in &self.sequences {
            let (last, prefix) = word.split_last().expect("non-empty");
            if row.ids.ends_with(prefix)
                && let Some(s) = scores.get_mut(*last as usize)
            {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

fn ban(eos: &[u32], scores: &mut [f32]) {
    for &id in eos {
        if let Some(s) = scores.get_mut(id as usize) {
            *s = f32::NEG_INFINITY;
        }
    }
}

/// `MinLengthLogitsProcessor`: eos ids get `-inf` while the row holds fewer than `min_length` ids.
#[derive(Debug, Clone)]
pub struct MinLength {
    min_length: usize,
    eos: Vec<u32>,
}

impl MinLength {
    /// `min_length` counts every id of the row (prompt included).
    pub fn new(min_length: usize, eos_token_id: &[u32]) -> Self {
        Self {
            min_length,
            eos: eos_token_id.to_vec(),
        }
    }
}

impl LogitsProcessor for MinLength {
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        if row.ids.len() < self.min_length {
            ban(&self.eos, scores);
        }
    }
}

/// `MinNewTokensLengthLogitsProcessor`: eos ids get `-inf` until `min_new_tokens` ids follow the prompt's
/// `prompt_len`.
#[derive(Debug, Clone)]
pub struct MinNewTokens {
    prompt_len: usize,
    min_new_tokens: usize,
    eos: Vec<u32>,
}

impl MinNewTokens {
    /// The prompt length to skip, the minimum, the eos ids.
    pub fn new(prompt_len: usize, min_new_tokens: usize, eos_token_id: &[u32]) -> Self {
        Self {
            prompt_len,
            min_new_tokens,
            eos: eos_token_id.to_vec(),
        }
    }
}

impl LogitsProcessor for MinNewTokens {
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        if row.ids.len().saturating_sub(self.prompt_len) < self.min_new_tokens {
            ban(&self.eos, scores);
        }
    }
}

/// `TemperatureLogitsWarper`: scores divided by the temperature (in f32, as torch divides an f32 tensor).
#[derive(Debug, Clone, Copy)]
pub struct Temperature {
    temperature: f32,
}

impl Temperature {
    /// A positive temperature.
    pub fn new(temperature: f64) -> Self {
        Self {
            temperature: temperature as f32,
        }
    }
}

impl LogitsProcessor for Temperature {
    fn process(&self, _row: &RowIds<'_>, scores: &mut [f32]) {
        for s in scores {
            *s /= self.temperature;
        }
    }
}

/// `TopKLogitsWarper`: scores below the k-th largest get `-inf` (ties with it are kept).
#[derive(Debug, Clone, Copy)]
pub struct TopK {
    k: usize,
}

impl TopK {
    /// Keeps `max(top_k, min_tokens_to_keep)` tokens.
    pub fn new(top_k: usize, min_tokens_to_keep: usize) -> Self {
        Self {
            k: top_k.max(min_tokens_to_keep),
        }
    }
}

impl LogitsProcessor for TopK {
    fn process(&self, _row: &RowIds<'_>, scores: &mut [f32]) {
        let k = self.k.min(scores.len());
        if k == 0 || k == scores.len() {
            return;
        }
        let mut sorted = scores.to_vec();
        // k-th largest: descending order, index k - 1.
        let (_, kth, _) = sorted.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
        let kth = *kth;
        for s in scores {
            if *s < kth {
                *s = f32::NEG_INFINITY;
            }
        }
    }
}

/// `TopPLogitsWarper`: sorted ascending, tokens whose cumulative probability stays at or below `1 - top_p` get
/// `-inf`; the `min_tokens_to_keep` most likely always stay.
#[derive(Debug, Clone, Copy)]
pub struct TopP {
    threshold: f32,
    min_keep: usize,
}

impl TopP {
    /// `top_p` in `[0, 1]`.
    pub fn new(top_p: f64, min_tokens_to_keep: usize) -> Self {
        Self {
            threshold: (1.0 - top_p) as f32,
            min_keep: min_tokens_to_keep.max(1),
        }
    }
}

impl LogitsProcessor for TopP {
    fn process(&self, _row: &RowIds<'_>, scores: &mut [f32]) {
        let n = scores.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
        let probs = softmax(scores);
        // torch's CPU cumsum accumulates in double and stores each partial sum as float.
        let mut cumulative = 0.0f64;
        let keep_from = n.saturating_sub(self.min_keep);
        for (rank, &i) in order.iter().enumerate() {
            cumulative += f64::from(probs[i]);
            if rank < keep_from && (cumulative as f32) <= self.threshold {
                scores[i] = f32::NEG_INFINITY;
            }
        }
    }
}

/// Softmax of one row in f32 (the sum in f64); `-inf` scores get probability 0.
pub fn softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return vec![0.0; scores.len()];
    }
    let exps: Vec<f32> = scores.iter().map(|&s| (s - max).exp()).collect();
    let sum = exps.iter().map(|&e| f64::from(e)).sum::<f64>() as f32;
    exps.into_iter().map(|e| e / sum).collect()
}

/// Log-softmax of one row in f32 (the sum in f64), as transformers applies it before beam search.
pub fn log_softmax(scores: &[f32]) -> Vec<f32> {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum = scores
        .iter()
        .map(|&s| f64::from((s - max).exp()))
        .sum::<f64>();
    let log_sum = sum.ln() as f32;
    scores.iter().map(|&s| s - max - log_sum).collect()
}

/// The processors of one generation run in transformers' order.
#[derive(Debug, Default)]
pub struct ProcessorList {
    processors: Vec<Box<dyn LogitsProcessor>>,
}

/// What the built-in processors need to know about the prompt.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ProcessorContext {
    /// Ids every row starts with (the prompt ids, or the decoder start token).
    pub prompt_len: usize,
    /// Positions of the prompt that have no ids (an embeddings-only prompt of a decoder-only model): lengths in
    /// the config count them, the rows do not hold them.
    pub hidden_prompt_len: usize,
}

impl ProcessorList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a processor.
    pub fn push(&mut self, processor: Box<dyn LogitsProcessor>) {
        self.processors.push(processor);
    }

    /// Number of processors.
    pub fn len(&self) -> usize {
        self.processors.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }

    /// Applies every processor in order.
    pub fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        for p in &self.processors {
            p.process(row, scores);
        }
    }

    /// The list a run with `config` applies, for rows that start with `prompt_len` prompt ids (transformers'
    /// `_get_logits_processor` for the options blip2 implements, in its order).
    pub fn from_config(config: &GenerationConfig, prompt_len: usize) -> Self {
        Self::build(
            config,
            ProcessorContext {
                prompt_len,
                hidden_prompt_len: 0,
            },
            &[],
        )
    }

    /// transformers' list for `config`, with `extra` after the built-in processors and before the sampling
    /// warpers.
    pub(crate) fn build(
        config: &GenerationConfig,
        context: ProcessorContext,
        extra: &[std::sync::Arc<dyn LogitsProcessor>],
    ) -> Self {
        let mut list = Self::new();
        let eos = &config.eos_token_id;
        if config.repetition_penalty != 1.0 {
            list.push(Box::new(RepetitionPenalty::new(config.repetition_penalty)));
        }
        if config.no_repeat_ngram_size > 0 {
            list.push(Box::new(NoRepeatNGram::new(config.no_repeat_ngram_size)));
        }
        if let Some(bad) = &config.bad_words_ids {
            list.push(Box::new(NoBadWords::new(bad, eos)));
        }
        if !eos.is_empty() {
            // transformers turns min_new_tokens into min_length too, and adds both processors.
            let min_length = match config.min_new_tokens {
                Some(n) => n + context.prompt_len,
                None => config.min_length.saturating_sub(context.hidden_prompt_len),
            };
            if min_length > 0 {
                list.push(Box::new(MinLength::new(min_length, eos)));
            }
            if let Some(n) = config.min_new_tokens.filter(|&n| n > 0) {
                list.push(Box::new(MinNewTokens::new(context.prompt_len, n, eos)));
            }
        }
        for p in extra {
            list.push(Box::new(Shared(p.clone())));
        }
        if config.do_sample {
            // Beam sampling keeps one token beyond the eos ids so that a beam can always continue.
            let min_keep = if config.num_beams > 1 {
                eos.len().max(1) + 1
            } else {
                1
            };
            if config.temperature != 1.0 {
                list.push(Box::new(Temperature::new(config.temperature)));
            }
            if config.top_k != 0 {
                list.push(Box::new(TopK::new(config.top_k, min_keep)));
            }
            if config.top_p < 1.0 {
                list.push(Box::new(TopP::new(config.top_p, min_keep)));
            }
        }
        list
    }
}

#[derive(Debug)]
struct Shared(std::sync::Arc<dyn LogitsProcessor>);

impl LogitsProcessor for Shared {
    fn process(&self, row: &RowIds<'_>, scores: &mut [f32]) {
        self.0.process(row, scores);
    }
}

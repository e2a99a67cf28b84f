//! The loops: [`Generator`] runs greedy decoding, sampling and beam search over a [`DecoderOnlyLm`] or an
//! [`EncoderDecoderLm`]; [`TokenStream`] yields the tokens of greedy decoding and sampling as they are chosen.

use std::sync::Arc;
use std::time::Instant;

use blip2_nn::lm::{DecoderOnlyLm, EncoderDecoderLm, LmPrompt};
use burn::prelude::{Backend, Int, Tensor};

use crate::beam::{BeamSearch, beam_search};
use crate::output::GenerationOutput;
use crate::plan::{Plan, StoppingCriterion, row_stops};
use crate::processors::{LogitsProcessor, ProcessorContext, ProcessorList, RowIds};
use crate::sampling::{Rng, argmax, sample};
use crate::session::{Session, Started, repeat_indices, start_decoder_only, start_encoder_decoder};
use crate::{Error, GenerationConfig, MAX_ROWS};

/// What generation starts from.
///
/// For a decoder-only model the returned sequences begin with the prompt's ids (as transformers returns them),
/// and the ids are what the repetition and n-gram processors look at. A prompt of embeddings has no ids unless
/// they are given with [`Prompt::with_input_ids`] (BLIP-2 passes the ids its embeddings were made from,
/// `<image>` tokens included, as transformers does); without them only new tokens are returned. For an
/// encoder-decoder model the prompt is the encoder's input and the sequences begin with the decoder start token.
#[derive(Debug, Clone)]
pub struct Prompt<B: Backend> {
    /// Token ids `[batch, len]` or embeddings `[batch, len, dim]`.
    pub input: LmPrompt<B>,
    /// `[batch, len]`, 1 for tokens and 0 for padding (left padding for decoder-only models); all ones when
    /// `None`.
    pub attention_mask: Option<Tensor<B, 2, Int>>,
    /// The ids of an embeddings prompt, `[batch, len]` (decoder-only models).
    pub input_ids: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> Prompt<B> {
    /// A prompt of token ids `[batch, len]`.
    pub fn ids(ids: Tensor<B, 2, Int>) -> Self {
        Self {
            input: LmPrompt::Ids(ids),
            attention_mask: None,
            input_ids: None,
        }
    }

    /// A prompt of embeddings `[batch, len, dim]`.
    pub fn embeds(embeds: Tensor<B, 3>) -> Self {
        Self {
            input: LmPrompt::Embeds(embeds),
            attention_mask: None,
            input_ids: None,
        }
    }

    /// With a padding mask `[batch, len]`.
    pub fn with_attention_mask(mut self, mask: Tensor<B, 2, Int>) -> Self {
        self.attention_mask = Some(mask);
        self
    }

    /// With the ids behind an embeddings prompt `[batch, len]`.
    pub fn with_input_ids(mut self, ids: Tensor<B, 2, Int>) -> Self {
        self.input_ids = Some(ids);
        self
    }
}

/// Tokens chosen at one step of greedy decoding or sampling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTokens {
    /// 0 for the first new token.
    pub step: usize,
    /// One entry per row: the new id, or `None` for a row that had already ended (it is filled with pad).
    pub tokens: Vec<Option<u32>>,
}

/// Runs generation with one [`GenerationConfig`], plus a caller's processors and stopping criteria.
///
/// See the crate documentation for a complete example.
#[derive(Default)]
pub struct Generator {
    config: GenerationConfig,
    processors: Vec<Arc<dyn LogitsProcessor>>,
    stopping: Vec<Box<dyn StoppingCriterion>>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("config", &self.config)
            .field("processors", &self.processors)
            .field("stopping", &self.stopping.len())
            .finish()
    }
}

fn read_ids<B: Backend>(ids: Tensor<B, 2, Int>, what: &str) -> Result<Vec<Vec<u32>>, Error> {
    let [batch, len] = ids.dims();
    let values: Vec<i64> = ids
        .into_data()
        .convert::<i64>()
        .into_vec()
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    if let Some(bad) = values.iter().find(|&&v| v < 0 || v > i64::from(u32::MAX)) {
        return Err(Error::bad_prompt(format!(
            "{what} holds {bad}, not a token id"
        )));
    }
    let mut rows = vec![Vec::with_capacity(len); batch];
    for (i, v) in values.into_iter().enumerate() {
        rows[i / len.max(1)].push(v as u32);
    }
    Ok(rows)
}

impl Generator {
    /// A generator for `config` (validated).
    ///
    /// # Errors
    /// [`Error::InvalidConfig`].
    pub fn new(config: GenerationConfig) -> Result<Self, Error> {
        config.validate()?;
        Ok(Self {
            config,
            processors: Vec::new(),
            stopping: Vec::new(),
        })
    }

    /// The config.
    pub fn config(&self) -> &GenerationConfig {
        &self.config
    }

    /// Adds a processor, run after the built-in ones and before the sampling warpers (transformers' place for
    /// a caller's processors).
    pub fn with_logits_processor(mut self, processor: impl LogitsProcessor + 'static) -> Self {
        self.processors.push(Arc::new(processor));
        self
    }

    /// Adds a stopping criterion.
    pub fn with_stopping_criterion(mut self, criterion: impl StoppingCriterion + 'static) -> Self {
        self.stopping.push(Box::new(criterion));
        self
    }

    /// Rows per prompt: beams, or independent samples.
    fn expand(&self) -> usize {
        if self.config.num_beams > 1 {
            self.config.num_beams
        } else {
            self.config.num_return_sequences
        }
    }

    fn mask<B: Backend>(prompt: &Prompt<B>) -> Result<Tensor<B, 2, Int>, Error> {
        let [batch, len] = prompt.input.dims();
        if batch == 0 || len == 0 {
            return Err(Error::bad_prompt(format!(
                "the prompt is empty ([{batch}, {len}]): give at least one position per row"
            )));
        }
        match &prompt.attention_mask {
            Some(mask) if mask.dims() != [batch, len] => Err(Error::bad_prompt(format!(
                "attention_mask is {:?}, the prompt [{batch}, {len}]",
                mask.dims()
            ))),
            Some(mask) => Ok(mask.clone()),
            None => Ok(Tensor::ones([batch, len], &prompt.input.device())),
        }
    }

    fn plan(
        &self,
        rows: Vec<Vec<u32>>,
        padding: Vec<usize>,
        prompt_len: usize,
        positions: usize,
        max_positions: Option<usize>,
        vocab: usize,
    ) -> Result<Plan, Error> {
        let config = &self.config;
        let hidden = positions - prompt_len;
        let max_new = config.new_tokens_for(positions, max_positions)?;
        let expand = self.expand();
        if rows.len() * expand > MAX_ROWS {
            return Err(Error::TooManyRows {
                field: if config.num_beams > 1 {
                    "num_beams"
                } else {
                    "num_return_sequences"
                },
                per_prompt: expand,
                prompts: rows.len(),
                limit: MAX_ROWS,
            });
        }
        if let Some(bad) = config
            .bad_words_ids
            .iter()
            .flatten()
            .flatten()
            .find(|&&id| id as usize >= vocab)
        {
            return Err(Error::invalid(
                &["bad_words_ids"],
                format!("token {bad} is outside the vocabulary (0..{vocab})"),
            ));
        }
        let processors = ProcessorList::build(
            config,
            ProcessorContext {
                prompt_len,
                hidden_prompt_len: hidden,
            },
            &self.processors,
        );
        let rows: Vec<Vec<u32>> = repeat_indices(rows.len(), expand)
            .into_iter()
            .map(|r| rows[r].clone())
            .collect();
        let padding = repeat_indices(padding.len(), expand)
            .into_iter()
            .map(|r| padding[r])
            .collect();
        let fill = config.fill_token_id();
        if fill.is_none() && rows.len() > 1 && !self.stopping.is_empty() {
            return Err(Error::invalid(
                &["pad_token_id", "eos_token_id"],
                "a row stopped by a stopping criterion is filled with pad_token_id (or the eos id): set one",
            ));
        }
        Ok(Plan {
            rows,
            padding,
            prompt_len,
            max_total: prompt_len + max_new,
            processors,
            fill,
        })
    }

    fn plan_decoder_only<B: Backend, L: DecoderOnlyLm<B>>(
        &self,
        lm: &L,
        prompt: &Prompt<B>,
        mask: &Tensor<B, 2, Int>,
    ) -> Result<Plan, Error> {
        let [batch, len] = prompt.input.dims();
        let mask_rows = read_ids(mask.clone(), "attention_mask")?;
        // transformers: the first non-zero mask position (0 for a row of zeros).
        let padding = mask_rows
            .iter()
            .map(|row| row.iter().position(|&m| m != 0).unwrap_or(0))
            .collect();
        let rows = match (&prompt.input, &prompt.input_ids) {
            (LmPrompt::Ids(ids), _) => read_ids(ids.clone(), "the prompt")?,
            (LmPrompt::Embeds(_), Some(ids)) => {
                if ids.dims() != [batch, len] {
                    return Err(Error::bad_prompt(format!(
                        "input_ids are {:?}, the embeddings [{batch}, {len}, ..]",
                        ids.dims()
                    )));
                }
                read_ids(ids.clone(), "input_ids")?
            }
            (LmPrompt::Embeds(_), None) => vec![Vec::new(); batch],
        };
        let prompt_len = rows[0].len();
        // transformers' default: 20 new tokens, within the position table.
        self.plan(
            rows,
            padding,
            prompt_len,
            len,
            lm.max_positions(),
            lm.vocab_size(),
        )
    }

    fn start_token<B: Backend, L: EncoderDecoderLm<B>>(&self, lm: &L) -> Result<u32, Error> {
        self.config
            .decoder_start_token_id
            .or_else(|| lm.decoder_start_token_id())
            .or(self.config.bos_token_id)
            .ok_or_else(|| {
                Error::invalid(
                    &["decoder_start_token_id", "bos_token_id"],
                    "an encoder-decoder model needs a decoder start token: set decoder_start_token_id",
                )
            })
    }

    /// Generates from a decoder-only model (greedy, sampling or beam search, as the config says).
    ///
    /// # Errors
    /// A bad prompt, a config that does not fit the prompt, the model's errors, NaN logits.
    pub fn generate<B: Backend, L: DecoderOnlyLm<B>>(
        &mut self,
        lm: &L,
        prompt: Prompt<B>,
    ) -> Result<GenerationOutput, Error> {
        if self.config.num_beams > 1 {
            let mask = Self::mask(&prompt)?;
            let plan = self.plan_decoder_only(lm, &prompt, &mask)?;
            let started = start_decoder_only(lm, prompt.input, mask, self.config.num_beams)?;
            self.run_beams(plan, started)
        } else {
            self.stream(lm, prompt)?.finish()
        }
    }

    /// Generates from an encoder-decoder model (greedy, sampling or beam search, as the config says).
    ///
    /// # Errors
    /// As [`Self::generate`], and a missing decoder start token.
    pub fn generate_seq2seq<B: Backend, L: EncoderDecoderLm<B>>(
        &mut self,
        lm: &L,
        prompt: Prompt<B>,
    ) -> Result<GenerationOutput, Error> {
        if self.config.num_beams > 1 {
            let (plan, started) = self.start_seq2seq(lm, prompt)?;
            self.run_beams(plan, started)
        } else {
            self.stream_seq2seq(lm, prompt)?.finish()
        }
    }

    fn start_seq2seq<'a, B: Backend, L: EncoderDecoderLm<B>>(
        &self,
        lm: &'a L,
        prompt: Prompt<B>,
    ) -> Result<(Plan, Started<'a, B>), Error> {
        let mask = Self::mask(&prompt)?;
        let start = self.start_token(lm)?;
        let batch = mask.dims()[0];
        let plan = self.plan(
            vec![vec![start]; batch],
            vec![0; batch],
            1,
            1,
            None,
            lm.vocab_size(),
        )?;
        let started = start_encoder_decoder(lm, prompt.input, mask, self.expand(), start)?;
        Ok((plan, started))
    }

    fn run_beams<B: Backend>(
        &mut self,
        plan: Plan,
        started: Started<'_, B>,
    ) -> Result<GenerationOutput, Error> {
        let rng = self
            .config
            .seed
            .map_or_else(Rng::from_entropy, Rng::seed_from);
        beam_search(BeamSearch {
            config: &self.config,
            plan,
            started,
            stopping: &mut self.stopping,
            rng,
        })
    }

    fn check_streamable(&self) -> Result<(), Error> {
        if self.config.num_beams > 1 {
            return Err(Error::invalid(
                &["num_beams"],
                "beam search settles its tokens only at the end, so it cannot stream: use generate",
            ));
        }
        Ok(())
    }

    /// Greedy decoding or sampling from a decoder-only model, one step per iteration.
    ///
    /// # Errors
    /// As [`Self::generate`], and beam search (which cannot stream).
    pub fn stream<'a, B: Backend, L: DecoderOnlyLm<B>>(
        &'a mut self,
        lm: &'a L,
        prompt: Prompt<B>,
    ) -> Result<TokenStream<'a, B>, Error> {
        self.check_streamable()?;
        let mask = Self::mask(&prompt)?;
        let plan = self.plan_decoder_only(lm, &prompt, &mask)?;
        let started = start_decoder_only(lm, prompt.input, mask, self.expand())?;
        Ok(TokenStream::new(self, plan, started))
    }

    /// Greedy decoding or sampling from an encoder-decoder model, one step per iteration.
    ///
    /// # Errors
    /// As [`Self::generate_seq2seq`], and beam search (which cannot stream).
    pub fn stream_seq2seq<'a, B: Backend, L: EncoderDecoderLm<B>>(
        &'a mut self,
        lm: &'a L,
        prompt: Prompt<B>,
    ) -> Result<TokenStream<'a, B>, Error> {
        self.check_streamable()?;
        let (plan, started) = self.start_seq2seq(lm, prompt)?;
        Ok(TokenStream::new(self, plan, started))
    }
}

/// Greedy decoding or sampling as an iterator: each item is the step's new token per row. Drop it to stop
/// early; [`TokenStream::finish`] runs to the end and returns the sequences.
pub struct TokenStream<'a, B: Backend> {
    session: Box<dyn Session<B> + 'a>,
    plan: Plan,
    config: &'a GenerationConfig,
    stopping: &'a mut [Box<dyn StoppingCriterion>],
    vocab: usize,
    logits: Option<Vec<f32>>,
    to_feed: Option<Vec<u32>>,
    finished: Vec<bool>,
    active: Vec<usize>,
    rng: Rng,
    started: Instant,
    step: usize,
    done: bool,
}

impl<B: Backend> std::fmt::Debug for TokenStream<'_, B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("step", &self.step)
            .field("rows", &self.plan.rows.len())
            .field("done", &self.done)
            .finish()
    }
}

impl<'a, B: Backend> TokenStream<'a, B> {
    fn new(generator: &'a mut Generator, plan: Plan, started: Started<'a, B>) -> Self {
        let config = &generator.config;
        let rows = plan.rows.len();
        Self {
            session: started.session,
            plan,
            config,
            stopping: &mut generator.stopping,
            vocab: started.vocab,
            logits: Some(started.logits),
            to_feed: None,
            finished: vec![false; rows],
            active: (0..rows).collect(),
            rng: config.seed.map_or_else(Rng::from_entropy, Rng::seed_from),
            started: Instant::now(),
            step: 0,
            done: false,
        }
    }

    /// The ids of every row so far.
    pub fn sequences(&self) -> &[Vec<u32>] {
        &self.plan.rows
    }

    /// Leading prompt ids of every row.
    pub fn prompt_len(&self) -> usize {
        self.plan.prompt_len
    }

    /// Runs the remaining steps and returns what was generated.
    ///
    /// # Errors
    /// As the steps.
    pub fn finish(mut self) -> Result<GenerationOutput, Error> {
        for step in self.by_ref() {
            step?;
        }
        Ok(GenerationOutput {
            sequences: self.plan.rows,
            sequences_scores: None,
            prompt_len: self.plan.prompt_len,
            num_return_sequences: self.config.num_return_sequences,
        })
    }

    fn next_step(&mut self) -> Result<NewTokens, Error> {
        if let Some(tokens) = self.to_feed.take() {
            self.logits = Some(self.session.step(&tokens)?);
        }
        let logits = self.logits.take().expect("logits after feeding");
        let vocab = self.vocab;
        let rows = self.plan.rows.len();
        let mut chosen = vec![None; rows];
        // The model holds the running rows only (`active`, in its row order); ended rows are filled here.
        for (&r, scores) in self.active.iter().zip(logits.chunks(vocab)) {
            let mut scores = scores.to_vec();
            self.plan.processors.process(
                &RowIds::with_padding(&self.plan.rows[r], self.plan.padding[r]),
                &mut scores,
            );
            if scores.iter().any(|s| s.is_nan()) {
                return Err(Error::NanLogits {
                    step: self.step,
                    row: r,
                });
            }
            let token = if self.config.do_sample {
                sample(&scores, &mut self.rng).ok_or_else(|| Error::NothingToSample {
                    step: self.step,
                    row: r,
                    available: 0,
                    needed: 1,
                })?
            } else {
                argmax(&scores)
            } as u32;
            chosen[r] = Some(token);
        }
        for (r, token) in chosen.iter().enumerate() {
            let token = token
                .or(self.plan.fill)
                .expect("ended rows imply a fill token");
            self.plan.rows[r].push(token);
        }
        let timed_out = self
            .config
            .max_time
            .is_some_and(|t| self.started.elapsed().as_secs_f64() > t);
        for &r in &self.active {
            self.finished[r] = timed_out
                || row_stops(
                    &self.plan.rows[r],
                    &self.plan,
                    &self.config.eos_token_id,
                    self.stopping,
                );
        }
        if self.plan.fill.is_none() && self.finished.iter().any(|&f| f) {
            // Without a fill id a row cannot wait for the others (only possible with one row per run).
            self.finished.iter_mut().for_each(|f| *f = true);
        }
        self.done = self.finished.iter().all(|&f| f);
        if !self.done {
            // Ended rows leave the model's batch (transformers keeps computing them on pad tokens).
            let keep: Vec<usize> = (0..self.active.len())
                .filter(|&i| !self.finished[self.active[i]])
                .collect();
            if keep.len() < self.active.len() {
                self.session.reorder(&keep);
                self.active = keep.iter().map(|&i| self.active[i]).collect();
            }
            self.to_feed = Some(
                self.active
                    .iter()
                    .map(|&r| *self.plan.rows[r].last().expect("a token per step"))
                    .collect(),
            );
        }
        let step = self.step;
        self.step += 1;
        Ok(NewTokens {
            step,
            tokens: chosen,
        })
    }
}

impl<B: Backend> Iterator for TokenStream<'_, B> {
    type Item = Result<NewTokens, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let step = self.next_step();
        if step.is_err() {
            self.done = true;
        }
        Some(step)
    }
}

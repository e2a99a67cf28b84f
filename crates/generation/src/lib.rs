//! Text generation with transformers' semantics, for any language model on Burn.
//!
//! - [`GenerationConfig`]: transformers' options, names and defaults, read from `generation_config.json` and
//!   overridable field by field; [`GenerationConfig::validate`] names the fields of an invalid combination.
//! - [`processors`]: the logits processors (repetition penalty, no-repeat-ngram, bad words, min length, min new
//!   tokens, temperature, top-k, top-p), applied in transformers' order; add your own with
//!   [`Generator::with_logits_processor`].
//! - [`Generator`]: greedy decoding, multinomial sampling (reproducible for a seed), beam search (length
//!   penalty, the three `early_stopping` modes, `num_return_sequences`, `sequences_scores`) and beam sampling.
//!   In a batch each row stops on its own (eos, length, `max_time`, a caller's [`StoppingCriterion`]) and
//!   finished rows are filled with the pad id. Before a run it checks the prompt and the new tokens against
//!   the model's position table ([`DecoderOnlyLm::max_positions`]; [`Error::PromptTooLong`],
//!   [`Error::TooManyNewTokens`] naming `max_new_tokens`) and the rows against [`MAX_ROWS`] (prompts times
//!   `num_beams`, or times `num_return_sequences` when sampling; [`Error::TooManyRows`]).
//! - [`TokenStream`]: greedy decoding and sampling as an iterator of each step's new tokens, for streaming text.
//!
//! The crate knows no model: it drives the step traits of [`blip2_nn::lm`], re-exported here.
//! `blip2-opt`'s `OptForCausalLm` implements [`DecoderOnlyLm`] and `blip2-t5`'s `T5ForConditionalGeneration`
//! implements [`EncoderDecoderLm`].
//!
//! # Plugging in a language model
//!
//! Implement [`DecoderOnlyLm`] (or [`EncoderDecoderLm`]): the logits after a prompt, the logits after one
//! more token per row, and a reordering of whatever the model caches. This toy model's next-token logits
//! depend only on the last token (a bigram table), so it caches the last token of every row:
//!
//! ```
//! use blip2_generation::{DecoderOnlyLm, GenerationConfig, Generator, LmPrompt, Prompt};
//! use blip2_nn::backend::DefaultBackend as B;
//! use burn::prelude::*;
//!
//! /// Logits of the next token = row `last token` of a table.
//! struct Bigram {
//!     table: Tensor<B, 2>, // [vocab, vocab]
//! }
//!
//! impl DecoderOnlyLm<B> for Bigram {
//!     type Cache = Option<Tensor<B, 1, Int>>; // the last token of every row
//!     type Error = std::convert::Infallible;
//!
//!     fn vocab_size(&self) -> usize {
//!         self.table.dims()[0]
//!     }
//!     fn new_cache(&self) -> Self::Cache {
//!         None
//!     }
//!     fn prefill(
//!         &self,
//!         prompt: LmPrompt<B>,
//!         _mask: Tensor<B, 2, Int>,
//!         cache: &mut Self::Cache,
//!     ) -> Result<Tensor<B, 2>, Self::Error> {
//!         let LmPrompt::Ids(ids) = prompt else { unimplemented!("ids only") };
//!         let [rows, len] = ids.dims();
//!         let last = ids.narrow(1, len - 1, 1).reshape([rows]);
//!         *cache = Some(last.clone());
//!         Ok(self.table.clone().select(0, last))
//!     }
//!     fn decode_step(
//!         &self,
//!         tokens: Tensor<B, 2, Int>,
//!         _mask: Tensor<B, 2, Int>,
//!         cache: &mut Self::Cache,
//!     ) -> Result<Tensor<B, 2>, Self::Error> {
//!         let rows = tokens.dims()[0];
//!         let last = tokens.reshape([rows]);
//!         *cache = Some(last.clone());
//!         Ok(self.table.clone().select(0, last))
//!     }
//!     fn reorder_cache(&self, cache: &mut Self::Cache, rows: Tensor<B, 1, Int>) {
//!         *cache = cache.take().map(|last| last.select(0, rows));
//!     }
//! }
//!
//! let device = Default::default();
//! // 0 -> 1 -> 2 -> 3 (eos) is the likeliest path.
//! let table = Tensor::<B, 2>::from_floats(
//!     [[0.0, 5.0, 1.0, 0.0], [0.0, 0.0, 5.0, 1.0], [1.0, 0.0, 0.0, 5.0], [5.0, 0.0, 0.0, 0.0]],
//!     &device,
//! );
//! let lm = Bigram { table };
//! let prompt = Prompt::ids(Tensor::<B, 2, Int>::from_ints([[0]], &device));
//!
//! let config = GenerationConfig { max_new_tokens: Some(5), eos_token_id: vec![3], ..Default::default() };
//! let out = Generator::new(config.clone())?.generate(&lm, prompt.clone())?;
//! assert_eq!(out.sequences, [[0, 1, 2, 3]]);
//!
//! // The same with 2 beams, and streamed token by token with greedy decoding.
//! let beams = GenerationConfig { num_beams: 2, ..config.clone() };
//! let out = Generator::new(beams)?.generate(&lm, prompt.clone())?;
//! assert_eq!(out.sequences[0], [0, 1, 2, 3]);
//! let mut generator = Generator::new(config)?;
//! let streamed: Vec<u32> = generator
//!     .stream(&lm, prompt)?
//!     .map(|step| step.map(|s| s.tokens[0].unwrap()))
//!     .collect::<Result<_, _>>()?;
//! assert_eq!(streamed, [1, 2, 3]);
//! # Ok::<(), blip2_generation::Error>(())
//! ```

mod beam;
mod config;
mod error;
mod generate;
mod output;
mod plan;
pub mod processors;
pub mod sampling;
mod session;

pub use blip2_nn::lm::{DecoderOnlyLm, EncoderDecoderLm, LmPrompt};
pub use config::{EarlyStopping, GenerationConfig, MAX_ROWS};
pub use error::Error;
pub use generate::{Generator, NewTokens, Prompt, TokenStream};
pub use output::GenerationOutput;
pub use plan::StoppingCriterion;

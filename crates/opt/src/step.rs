//! [`DecoderOnlyLm`] for OPT: what a decoding loop (`blip2-generation`) drives.

use blip2_nn::KvCache;
use blip2_nn::lm::{DecoderOnlyLm, LmPrompt};
use burn::prelude::{Backend, Int, Tensor};

use crate::{Error, LogitsFor, OptForCausalLm, OptInput};

fn last_logits<B: Backend>(logits: Tensor<B, 3>) -> Tensor<B, 2> {
    let [rows, _, vocab] = logits.dims();
    logits.reshape([rows, vocab])
}

impl<B: Backend> DecoderOnlyLm<B> for OptForCausalLm<B> {
    type Cache = KvCache<B>;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.config.max_position_embeddings)
    }

    fn new_cache(&self) -> KvCache<B> {
        OptForCausalLm::new_cache(self)
    }

    /// Checks the prompt ([`OptForCausalLm::check`]), then runs it with logits for the last position only.
    fn prefill(
        &self,
        prompt: LmPrompt<B>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, Error> {
        let input = match prompt {
            LmPrompt::Ids(ids) => OptInput::Ids(ids),
            LmPrompt::Embeds(embeds) => OptInput::Embeds(embeds),
        };
        self.check(&input, Some(&attention_mask), Some(cache))?;
        let logits = self.forward(input, Some(attention_mask), Some(cache), LogitsFor::Last);
        Ok(last_logits(logits))
    }

    /// Runs one token per row; only the position limit is checked (the ids come from the loop).
    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        cache: &mut KvCache<B>,
    ) -> Result<Tensor<B, 2>, Error> {
        let positions = cache.seq_len() + tokens.dims()[1];
        if positions > self.config.max_position_embeddings {
            return Err(Error::bad_input(format!(
                "{positions} positions exceed max_position_embeddings ({})",
                self.config.max_position_embeddings
            )));
        }
        let logits = self.forward(
            OptInput::Ids(tokens),
            Some(attention_mask),
            Some(cache),
            LogitsFor::Last,
        );
        Ok(last_logits(logits))
    }

    fn reorder_cache(&self, cache: &mut KvCache<B>, rows: Tensor<B, 1, Int>) {
        cache.reorder(rows);
    }
}

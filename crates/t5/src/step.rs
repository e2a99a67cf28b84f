//! [`EncoderDecoderLm`] for T5: what a decoding loop (`blip2-generation`) drives.

use blip2_nn::lm::{EncoderDecoderLm, LmPrompt};
use burn::prelude::{Backend, Int, Tensor};

use crate::{Error, LogitsFor, T5Cache, T5ForConditionalGeneration, T5Input};

/// The encoder's output with its padding mask, as the decoder reads them at every step.
#[derive(Debug, Clone)]
pub struct T5Encoded<B: Backend> {
    /// `[rows, enc_len, d_model]`.
    pub hidden: Tensor<B, 3>,
    /// `[rows, enc_len]`, `1` for tokens and `0` for padding.
    pub mask: Tensor<B, 2, Int>,
}

impl<B: Backend> EncoderDecoderLm<B> for T5ForConditionalGeneration<B> {
    type Encoded = T5Encoded<B>;
    type Cache = T5Cache<B>;
    type Error = Error;

    fn vocab_size(&self) -> usize {
        self.config.vocab_size
    }

    fn decoder_start_token_id(&self) -> Option<u32> {
        self.config.decoder_start_token_id
    }

    /// Checks the prompt ([`T5ForConditionalGeneration::check_encode`]), then encodes it.
    fn encode(
        &self,
        prompt: LmPrompt<B>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> Result<T5Encoded<B>, Error> {
        let input = match prompt {
            LmPrompt::Ids(ids) => T5Input::Ids(ids),
            LmPrompt::Embeds(embeds) => T5Input::Embeds(embeds),
        };
        self.check_encode(&input, Some(&attention_mask))?;
        let hidden = T5ForConditionalGeneration::encode(self, input, Some(attention_mask.clone()));
        Ok(T5Encoded {
            hidden,
            mask: attention_mask,
        })
    }

    fn reorder_encoded(&self, encoded: T5Encoded<B>, rows: Tensor<B, 1, Int>) -> T5Encoded<B> {
        T5Encoded {
            hidden: encoded.hidden.select(0, rows.clone()),
            mask: encoded.mask.select(0, rows),
        }
    }

    fn new_cache(&self) -> T5Cache<B> {
        T5ForConditionalGeneration::new_cache(self)
    }

    /// Runs one decoder token per row against the encoder output (the ids come from the loop and are not
    /// read back).
    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        encoded: &T5Encoded<B>,
        cache: &mut T5Cache<B>,
    ) -> Result<Tensor<B, 2>, Error> {
        let [rows, _] = tokens.dims();
        if encoded.hidden.dims()[0] != rows {
            return Err(Error::bad_input(format!(
                "{rows} decoder rows for {} encoded rows",
                encoded.hidden.dims()[0]
            )));
        }
        let logits = self.decode(
            tokens,
            encoded.hidden.clone(),
            Some(encoded.mask.clone()),
            Some(cache),
            LogitsFor::Last,
        );
        let vocab = logits.dims()[2];
        Ok(logits.reshape([rows, vocab]))
    }

    /// Reorders the self-attention and the cross-attention caches alike.
    fn reorder_cache(&self, cache: &mut T5Cache<B>, rows: Tensor<B, 1, Int>) {
        cache.reorder(rows);
    }
}

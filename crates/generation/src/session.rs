//! One interface over both step traits for the loops: feed a token per row, get logits back on the host;
//! reorder rows.

use blip2_nn::lm::{DecoderOnlyLm, EncoderDecoderLm, LmPrompt};
use burn::prelude::{Backend, Int, Tensor};
use burn::tensor::TensorData;

use crate::Error;

/// A model mid-generation, whichever kind.
pub(crate) trait Session<B: Backend> {
    /// Feeds one token per row; returns the next logits, `[rows * vocab]` in f32.
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, Error>;
    /// Keeps rows `rows` in that order (indices may repeat).
    fn reorder(&mut self, rows: &[usize]);
}

/// A started session and the logits of its first step.
pub(crate) struct Started<'a, B: Backend> {
    pub session: Box<dyn Session<B> + 'a>,
    pub logits: Vec<f32>,
    pub vocab: usize,
}

fn model_error(e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Model(Box::new(e))
}

fn index_tensor<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(data, [rows.len()]), device)
}

fn token_tensor<B: Backend>(tokens: &[u32], device: &B::Device) -> Tensor<B, 2, Int> {
    let data: Vec<i64> = tokens.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(data, [tokens.len(), 1]), device)
}

/// Reads `[rows, vocab]` logits back as f32.
fn read_logits<B: Backend>(logits: Tensor<B, 2>, rows: usize) -> Result<(Vec<f32>, usize), Error> {
    let [got_rows, vocab] = logits.dims();
    if got_rows != rows || vocab == 0 {
        return Err(Error::Model(
            format!(
                "the model returned logits {:?} for {rows} rows",
                logits.dims()
            )
            .into(),
        ));
    }
    let data = logits.into_data().convert::<f32>();
    let values = data
        .into_vec::<f32>()
        .map_err(|e| Error::Readback(format!("{e:?}")))?;
    Ok((values, vocab))
}

/// `[0, 0, .., 1, 1, ..]`: each of `rows` rows `times` times.
pub(crate) fn repeat_indices(rows: usize, times: usize) -> Vec<usize> {
    (0..rows)
        .flat_map(|r| std::iter::repeat_n(r, times))
        .collect()
}

struct DecoderOnly<'a, B: Backend, L: DecoderOnlyLm<B>> {
    lm: &'a L,
    cache: L::Cache,
    mask: Tensor<B, 2, Int>,
}

impl<B: Backend, L: DecoderOnlyLm<B>> Session<B> for DecoderOnly<'_, B, L> {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, Error> {
        let device = self.mask.device();
        let ones = Tensor::<B, 2, Int>::ones([tokens.len(), 1], &device);
        self.mask = Tensor::cat(vec![self.mask.clone(), ones], 1);
        let logits = self
            .lm
            .decode_step(
                token_tensor(tokens, &device),
                self.mask.clone(),
                &mut self.cache,
            )
            .map_err(model_error)?;
        Ok(read_logits(logits, tokens.len())?.0)
    }

    fn reorder(&mut self, rows: &[usize]) {
        let index = index_tensor::<B>(rows, &self.mask.device());
        self.lm.reorder_cache(&mut self.cache, index.clone());
        self.mask = self.mask.clone().select(0, index);
    }
}

/// Prefills a decoder-only model, then repeats every row `expand` times.
pub(crate) fn start_decoder_only<'a, B: Backend, L: DecoderOnlyLm<B>>(
    lm: &'a L,
    prompt: LmPrompt<B>,
    mask: Tensor<B, 2, Int>,
    expand: usize,
) -> Result<Started<'a, B>, Error> {
    let rows = mask.dims()[0];
    let mut cache = lm.new_cache();
    let logits = lm
        .prefill(prompt, mask.clone(), &mut cache)
        .map_err(model_error)?;
    let (logits, vocab) = read_logits(logits, rows)?;
    let mut session = DecoderOnly { lm, cache, mask };
    let logits = if expand > 1 {
        session.reorder(&repeat_indices(rows, expand));
        logits
            .chunks(vocab)
            .flat_map(|row| std::iter::repeat_n(row, expand).flatten().copied())
            .collect()
    } else {
        logits
    };
    Ok(Started {
        session: Box::new(session),
        logits,
        vocab,
    })
}

struct EncoderDecoder<'a, B: Backend, L: EncoderDecoderLm<B>> {
    lm: &'a L,
    encoded: Option<L::Encoded>,
    cache: L::Cache,
    device: B::Device,
}

impl<B: Backend, L: EncoderDecoderLm<B>> Session<B> for EncoderDecoder<'_, B, L> {
    fn step(&mut self, tokens: &[u32]) -> Result<Vec<f32>, Error> {
        let encoded = self
            .encoded
            .as_ref()
            .expect("encoded is only taken in reorder");
        let logits = self
            .lm
            .decode_step(token_tensor(tokens, &self.device), encoded, &mut self.cache)
            .map_err(model_error)?;
        Ok(read_logits(logits, tokens.len())?.0)
    }

    fn reorder(&mut self, rows: &[usize]) {
        let index = index_tensor::<B>(rows, &self.device);
        self.lm.reorder_cache(&mut self.cache, index.clone());
        if let Some(encoded) = self.encoded.take() {
            self.encoded = Some(self.lm.reorder_encoded(encoded, index));
        }
    }
}

/// Encodes once, repeats every encoded row `expand` times, and decodes the start token.
pub(crate) fn start_encoder_decoder<'a, B: Backend, L: EncoderDecoderLm<B>>(
    lm: &'a L,
    prompt: LmPrompt<B>,
    mask: Tensor<B, 2, Int>,
    expand: usize,
    start_token: u32,
) -> Result<Started<'a, B>, Error> {
    let rows = mask.dims()[0];
    let device = mask.device();
    let mut encoded = lm.encode(prompt, mask).map_err(model_error)?;
    if expand > 1 {
        encoded = lm.reorder_encoded(
            encoded,
            index_tensor(&repeat_indices(rows, expand), &device),
        );
    }
    let mut session = EncoderDecoder {
        lm,
        encoded: Some(encoded),
        cache: lm.new_cache(),
        device,
    };
    let logits = session.step(&vec![start_token; rows * expand])?;
    let vocab = logits.len() / (rows * expand);
    Ok(Started {
        session: Box::new(session),
        logits,
        vocab,
    })
}

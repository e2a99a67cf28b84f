//! The caps a caller can run into before a run starts: prompts and new tokens against a model's position
//! table (checked before the prompt is read, naming `max_new_tokens`), and the cap on rows per run
//! (`num_beams` or `num_return_sequences` times the prompts), on a small stand-in model with a position table.

use blip2_generation::{
    DecoderOnlyLm, Error, GenerationConfig, Generator, LmPrompt, MAX_ROWS, Prompt,
};
use burn::prelude::*;

type B = blip2_testkit::Flex;

const VOCAB: usize = 8;
const EOS: u32 = 7;

/// Uniform-ish logits that never pick eos; a table of `positions` positions, counted as OPT counts them (the
/// cache's length), checked at every step as OPT does.
struct Positions {
    positions: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("positions: {0}")]
struct PositionsError(String);

impl Positions {
    fn logits(rows: usize) -> Tensor<B, 2> {
        let row: Vec<f32> = (0..VOCAB).map(|t| if t == 1 { 1.0 } else { 0.0 }).collect();
        let data: Vec<f32> = row.repeat(rows);
        Tensor::from_data(TensorData::new(data, [rows, VOCAB]), &Default::default())
    }
}

impl DecoderOnlyLm<B> for Positions {
    type Cache = usize;
    type Error = PositionsError;

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn max_positions(&self) -> Option<usize> {
        Some(self.positions)
    }

    fn new_cache(&self) -> usize {
        0
    }

    fn prefill(
        &self,
        prompt: LmPrompt<B>,
        _mask: Tensor<B, 2, Int>,
        cache: &mut usize,
    ) -> Result<Tensor<B, 2>, PositionsError> {
        let [rows, len] = prompt.dims();
        if len > self.positions {
            return Err(PositionsError(format!("{len} positions")));
        }
        *cache = len;
        Ok(Self::logits(rows))
    }

    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        _mask: Tensor<B, 2, Int>,
        cache: &mut usize,
    ) -> Result<Tensor<B, 2>, PositionsError> {
        *cache += 1;
        if *cache > self.positions {
            return Err(PositionsError(format!("{} positions", *cache)));
        }
        Ok(Self::logits(tokens.dims()[0]))
    }

    fn reorder_cache(&self, _cache: &mut usize, _rows: Tensor<B, 1, Int>) {}
}

fn prompt(rows: usize, len: usize) -> Prompt<B> {
    let data: Vec<i64> = vec![2; rows * len];
    Prompt::ids(Tensor::from_data(
        TensorData::new(data, [rows, len]),
        &Default::default(),
    ))
}

fn config(max_new_tokens: usize, num_beams: usize) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(max_new_tokens),
        num_beams,
        eos_token_id: vec![EOS],
        pad_token_id: Some(0),
        ..GenerationConfig::default()
    }
}

/// A prompt of 10 positions in a table of 16 leaves room for 7 new tokens (the last one is never read): 7
/// run to the end, 8 are refused before the model is called, naming max_new_tokens and the positions, for
/// greedy decoding and beam search alike (before, the run stopped at the table's end with the model's error).
#[test]
fn max_new_tokens_is_checked_against_the_position_table_before_the_run() {
    let lm = Positions { positions: 16 };
    for beams in [1, 2] {
        let out = Generator::new(config(7, beams))
            .unwrap()
            .generate(&lm, prompt(1, 10))
            .unwrap();
        assert_eq!(out.new_tokens(0).len(), 7, "beams {beams}");
        let err = Generator::new(config(8, beams))
            .unwrap()
            .generate(&lm, prompt(1, 10))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::TooManyNewTokens {
                    prompt: 10,
                    max_new_tokens: 8,
                    max_positions: 16
                }
            ),
            "beams {beams}: {err:?}"
        );
        let message = err.to_string();
        for part in ["max_new_tokens 8", "16 positions", "room for 7 new tokens"] {
            assert!(message.contains(part), "{message}");
        }
    }
    // Without max_new_tokens the default (20) is capped to the table, as transformers' is.
    let out = Generator::new(GenerationConfig {
        max_new_tokens: None,
        ..config(1, 1)
    })
    .unwrap()
    .generate(&lm, prompt(1, 10))
    .unwrap();
    assert_eq!(out.new_tokens(0).len(), 6);
}

/// A prompt longer than the table is a typed error naming both lengths, not the model's own error.
#[test]
fn a_prompt_over_the_position_table_is_refused_by_name() {
    let lm = Positions { positions: 16 };
    let err = Generator::new(config(1, 1))
        .unwrap()
        .generate(&lm, prompt(1, 17))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::PromptTooLong {
                length: 17,
                max_positions: 16
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_position_embeddings"), "{err}");
}

/// num_beams (and num_return_sequences) over the cap are refused by `validate`, before any model is involved;
/// a batch whose prompts times beams pass the cap is refused before the prompt is read.
#[test]
fn rows_per_run_are_capped() {
    for (field, config) in [
        ("num_beams", config(3, 1_000_000)),
        (
            "num_return_sequences",
            GenerationConfig {
                do_sample: true,
                num_return_sequences: MAX_ROWS + 1,
                ..config(3, 1)
            },
        ),
    ] {
        let err = config.validate().unwrap_err();
        match &err {
            Error::InvalidConfig { fields, .. } => assert_eq!(fields, &vec![field]),
            other => panic!("{field}: {other:?}"),
        }
        assert!(err.to_string().contains(&MAX_ROWS.to_string()), "{err}");
    }
    let lm = Positions { positions: 64 };
    let beams = MAX_ROWS / 4;
    assert!(config(2, beams).validate().is_ok());
    let err = Generator::new(config(2, beams))
        .unwrap()
        .generate(&lm, prompt(5, 3))
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::TooManyRows {
                field: "num_beams",
                prompts: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("num_beams"), "{err}");
}

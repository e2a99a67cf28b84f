//! The loops on small stand-in models (a bigram table behind both step traits): sampling reproducibility and
//! its distribution, the reference support of top-k / top-p, streaming, stopping criteria, padding of finished
//! rows, and the errors a caller can trigger. Parity with transformers on real model ports is in the workspace
//! tests (`tests/generation.rs`).

use std::collections::BTreeMap;

use blip2_generation::processors::{LogitsProcessor, RowIds, Temperature, TopK, TopP, softmax};
use blip2_generation::sampling::{Rng, sample};
use blip2_generation::{
    DecoderOnlyLm, EncoderDecoderLm, Error, GenerationConfig, Generator, LmPrompt, Prompt,
};
use blip2_testkit::Fixture;
use burn::prelude::*;

type B = blip2_testkit::Flex;

const VOCAB: usize = 12;
const EOS: u32 = 11;
const PAD: u32 = 0;

/// Next-token logits depend on the last token only: row `last` of a fixed table. Cache: the last token of
/// every row.
struct Bigram {
    table: Tensor<B, 2>,
    nan_after: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
#[error("bigram: {0}")]
struct BigramError(String);

impl Bigram {
    fn new() -> Self {
        // Smooth but peaked rows: token t prefers t + 1, then t + 2, ...; 10 prefers eos.
        let mut rows = Vec::new();
        for t in 0..VOCAB {
            for u in 0..VOCAB {
                let d = (u + 2 * VOCAB - t - 1) % VOCAB;
                rows.push(3.0 - 0.7 * d as f32 + 0.05 * ((t * 7 + u * 3) % 5) as f32);
            }
        }
        let table = Tensor::from_data(TensorData::new(rows, [VOCAB, VOCAB]), &Default::default());
        Self {
            table,
            nan_after: None,
        }
    }

    fn logits(&self, last: Tensor<B, 1, Int>) -> Tensor<B, 2> {
        let logits = self.table.clone().select(0, last.clone());
        match self.nan_after {
            Some(t) => {
                let hit = last
                    .equal_elem(t)
                    .unsqueeze_dim::<2>(1)
                    .expand(logits.dims());
                logits.mask_fill(hit, f32::NAN)
            }
            None => logits,
        }
    }
}

impl DecoderOnlyLm<B> for Bigram {
    type Cache = Option<Tensor<B, 1, Int>>;
    type Error = BigramError;

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn new_cache(&self) -> Self::Cache {
        None
    }

    fn prefill(
        &self,
        prompt: LmPrompt<B>,
        _mask: Tensor<B, 2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 2>, BigramError> {
        let LmPrompt::Ids(ids) = prompt else {
            return Err(BigramError("embeddings are not supported".into()));
        };
        let [rows, len] = ids.dims();
        let last = ids.narrow(1, len - 1, 1).reshape([rows]);
        *cache = Some(last.clone());
        Ok(self.logits(last))
    }

    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        _mask: Tensor<B, 2, Int>,
        cache: &mut Self::Cache,
    ) -> Result<Tensor<B, 2>, BigramError> {
        let rows = tokens.dims()[0];
        let last = tokens.reshape([rows]);
        *cache = Some(last.clone());
        Ok(self.logits(last))
    }

    fn reorder_cache(&self, cache: &mut Self::Cache, rows: Tensor<B, 1, Int>) {
        *cache = cache.take().map(|c| c.select(0, rows));
    }
}

/// The same table as an encoder-decoder model: the encoder output is ignored apart from its row count.
impl EncoderDecoderLm<B> for Bigram {
    type Encoded = Tensor<B, 2, Int>;
    type Cache = ();
    type Error = BigramError;

    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn encode(
        &self,
        prompt: LmPrompt<B>,
        mask: Tensor<B, 2, Int>,
    ) -> Result<Self::Encoded, BigramError> {
        match prompt {
            LmPrompt::Ids(_) => Ok(mask),
            LmPrompt::Embeds(_) => Err(BigramError("embeddings are not supported".into())),
        }
    }

    fn reorder_encoded(&self, encoded: Self::Encoded, rows: Tensor<B, 1, Int>) -> Self::Encoded {
        encoded.select(0, rows)
    }

    fn new_cache(&self) {}

    fn decode_step(
        &self,
        tokens: Tensor<B, 2, Int>,
        encoded: &Self::Encoded,
        _cache: &mut (),
    ) -> Result<Tensor<B, 2>, BigramError> {
        let rows = tokens.dims()[0];
        assert_eq!(encoded.dims()[0], rows, "encoded rows follow the beams");
        Ok(self.logits(tokens.reshape([rows])))
    }

    fn reorder_cache(&self, _cache: &mut (), _rows: Tensor<B, 1, Int>) {}
}

fn ids(rows: &[&[i64]]) -> Tensor<B, 2, Int> {
    let len = rows[0].len();
    let data: Vec<i64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(
        TensorData::new(data, [rows.len(), len]),
        &Default::default(),
    )
}

fn base() -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(6),
        eos_token_id: vec![EOS],
        pad_token_id: Some(PAD),
        ..GenerationConfig::default()
    }
}

#[test]
fn greedy_follows_the_table_and_pads_finished_rows() {
    let lm = Bigram::new();
    // Row 0 reaches eos after 10 -> 11; row 1 runs to the limit.
    let prompt = Prompt::ids(ids(&[&[9], &[1]]));
    let out = Generator::new(base())
        .unwrap()
        .generate(&lm, prompt)
        .unwrap();
    assert_eq!(out.prompt_len, 1);
    assert_eq!(out.sequences[0], [9, 10, 11, PAD, PAD, PAD, PAD]);
    assert_eq!(out.sequences[1], [1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(out.new_tokens(1), [2, 3, 4, 5, 6, 7]);
    assert!(out.sequences_scores.is_none());
}

#[test]
fn the_stream_yields_what_generate_returns() {
    let lm = Bigram::new();
    let prompt = Prompt::ids(ids(&[&[9], &[1]]));
    let whole = Generator::new(base())
        .unwrap()
        .generate(&lm, prompt.clone())
        .unwrap();
    let mut generator = Generator::new(base()).unwrap();
    let steps: Vec<_> = generator
        .stream(&lm, prompt.clone())
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(steps.len(), 6);
    assert_eq!(steps[1].tokens, [Some(11), Some(3)]);
    assert_eq!(steps[2].tokens, [None, Some(4)], "row 0 ended at step 1");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step.step, i);
        for (r, t) in step.tokens.iter().enumerate() {
            let want = whole.sequences[r][1 + i];
            assert_eq!(t.unwrap_or(PAD), want);
        }
    }
    // Stopping early: drop the stream; finish() runs the rest.
    let mut generator = Generator::new(base()).unwrap();
    let mut stream = generator.stream(&lm, prompt).unwrap();
    stream.next().unwrap().unwrap();
    assert_eq!(stream.sequences()[1], [1, 2]);
    assert_eq!(stream.finish().unwrap(), whole);
}

#[test]
fn encoder_decoder_runs_start_from_the_decoder_start_token() {
    let lm = Bigram::new();
    let config = GenerationConfig {
        decoder_start_token_id: Some(8),
        max_new_tokens: Some(4),
        ..base()
    };
    let prompt = Prompt::ids(ids(&[&[1, 2, 3]]));
    let out = Generator::new(config.clone())
        .unwrap()
        .generate_seq2seq(&lm, prompt.clone())
        .unwrap();
    assert_eq!(out.sequences, [[8, 9, 10, 11]]);
    let beams = GenerationConfig {
        num_beams: 2,
        ..config
    };
    let out = Generator::new(beams)
        .unwrap()
        .generate_seq2seq(&lm, prompt.clone())
        .unwrap();
    assert_eq!(out.sequences[0], [8, 9, 10, 11]);
    // No start token anywhere: an error naming the field.
    let err = Generator::new(base())
        .unwrap()
        .generate_seq2seq(&lm, prompt)
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { fields, .. } if fields.contains(&"decoder_start_token_id")),
        "{err}"
    );
}

#[test]
fn a_stopping_criterion_ends_its_row_only() {
    let lm = Bigram::new();
    let prompt = Prompt::ids(ids(&[&[1], &[4]]));
    let mut generator = Generator::new(base()).unwrap().with_stopping_criterion(
        |ids: &[u32], prompt_len: usize| {
            assert_eq!(prompt_len, 1);
            ids.last() == Some(&3)
        },
    );
    let out = generator.generate(&lm, prompt).unwrap();
    assert_eq!(out.sequences[0], [1, 2, 3, PAD, PAD, PAD, PAD]);
    assert_eq!(out.sequences[1], [4, 5, 6, 7, 8, 9, 10]);
}

#[test]
fn a_callers_processor_runs_before_the_warpers() {
    /// Bans token 2.
    #[derive(Debug)]
    struct NoTwo;
    impl LogitsProcessor for NoTwo {
        fn process(&self, _row: &RowIds<'_>, scores: &mut [f32]) {
            scores[2] = f32::NEG_INFINITY;
        }
    }
    let lm = Bigram::new();
    let out = Generator::new(base())
        .unwrap()
        .with_logits_processor(NoTwo)
        .generate(&lm, Prompt::ids(ids(&[&[1]])))
        .unwrap();
    assert_eq!(out.sequences[0][1], 3);
    assert!(!out.sequences[0].contains(&2));
}

#[test]
fn sampling_is_reproducible_for_a_seed() {
    let lm = Bigram::new();
    let config = GenerationConfig {
        do_sample: true,
        seed: Some(42),
        num_return_sequences: 3,
        max_new_tokens: Some(10),
        temperature: 1.5,
        ..base()
    };
    let prompt = Prompt::ids(ids(&[&[1], &[5]]));
    let a = Generator::new(config.clone())
        .unwrap()
        .generate(&lm, prompt.clone())
        .unwrap();
    let b = Generator::new(config.clone())
        .unwrap()
        .generate(&lm, prompt.clone())
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a.sequences.len(), 6, "3 samples per prompt");
    assert!(
        a.sequences[..3].iter().all(|s| s[0] == 1) && a.sequences[3..].iter().all(|s| s[0] == 5)
    );
    let c = Generator::new(GenerationConfig {
        seed: Some(43),
        ..config
    })
    .unwrap()
    .generate(&lm, prompt)
    .unwrap();
    assert_ne!(a.sequences, c.sequences, "another seed, other samples");
}

#[test]
fn beam_sampling_is_reproducible_and_returns_sorted_scores() {
    let lm = Bigram::new();
    let config = GenerationConfig {
        do_sample: true,
        num_beams: 3,
        num_return_sequences: 3,
        seed: Some(7),
        temperature: 2.0,
        ..base()
    };
    let prompt = Prompt::ids(ids(&[&[1]]));
    let a = Generator::new(config.clone())
        .unwrap()
        .generate(&lm, prompt.clone())
        .unwrap();
    let b = Generator::new(config)
        .unwrap()
        .generate(&lm, prompt)
        .unwrap();
    assert_eq!(a, b);
    let scores = a.sequences_scores.unwrap();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
}

/// Fixed rows of logits: the `scores` of the logits-processors fixture.
fn fixture_rows() -> (Fixture, Vec<Vec<f32>>) {
    let fixture = Fixture::open("logits-processors");
    let data = fixture.data("scores").clone();
    let vocab = data.shape[1];
    let values: Vec<f32> = data.to_vec().unwrap();
    let rows = values.chunks(vocab).map(<[f32]>::to_vec).collect();
    (fixture, rows)
}

fn finite_support(values: &[f32]) -> Vec<usize> {
    (0..values.len())
        .filter(|&i| values[i].is_finite())
        .collect()
}

#[test]
fn top_k_and_top_p_sampling_keep_exactly_the_reference_support() {
    let (fixture, rows) = fixture_rows();
    let mut rng = Rng::seed_from(2026);
    for (key, processor) in [
        (
            "top_k/8",
            Box::new(TopK::new(8, 1)) as Box<dyn LogitsProcessor>,
        ),
        ("top_p/0.8", Box::new(TopP::new(0.8, 1))),
    ] {
        let reference: Vec<f32> = fixture.data(key).clone().to_vec().unwrap();
        let vocab = rows[0].len();
        for (r, row) in rows.iter().enumerate() {
            let want = finite_support(&reference[r * vocab..(r + 1) * vocab]);
            let mut scores = row.clone();
            processor.process(&RowIds::new(&[]), &mut scores);
            assert_eq!(finite_support(&scores), want, "{key} row {r}");
            // Every sample lies in the support, and every token of it shows up.
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..20_000 {
                seen.insert(sample(&scores, &mut rng).unwrap());
            }
            assert_eq!(
                seen.into_iter().collect::<Vec<_>>(),
                want,
                "{key} row {r} samples"
            );
        }
    }
}

/// Pearson's chi-square of sampled counts against the processed distribution (temperature 0.7, top-k 8):
/// with 7 degrees of freedom, 24.3 is the 0.1 % critical value. The seed is fixed, so the test is
/// deterministic; a sampler that ignored the warpers or skewed the draws fails it by orders of magnitude.
#[test]
fn sampled_frequencies_follow_the_processed_distribution() {
    let (_, rows) = fixture_rows();
    let mut scores = rows[0].clone();
    Temperature::new(0.7).process(&RowIds::new(&[]), &mut scores);
    TopK::new(8, 1).process(&RowIds::new(&[]), &mut scores);
    let probs = softmax(&scores);
    let n = 40_000;
    let mut rng = Rng::seed_from(11);
    let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
    for _ in 0..n {
        *counts
            .entry(sample(&scores, &mut rng).unwrap())
            .or_default() += 1;
    }
    let support = finite_support(&scores);
    assert_eq!(counts.keys().copied().collect::<Vec<_>>(), support);
    let chi2: f64 = support
        .iter()
        .map(|&i| {
            let expected = f64::from(probs[i]) * n as f64;
            let observed = counts[&i] as f64;
            (observed - expected).powi(2) / expected
        })
        .sum();
    assert!(
        chi2 < 24.3,
        "chi-square {chi2:.2} over {} tokens",
        support.len()
    );
    // The unprocessed distribution is clearly rejected by the same samples.
    let raw = softmax(&rows[0]);
    let chi2_raw: f64 = support
        .iter()
        .map(|&i| {
            let expected = f64::from(raw[i]) * n as f64;
            (counts[&i] as f64 - expected).powi(2) / expected
        })
        .sum();
    assert!(
        chi2_raw > 1000.0,
        "chi-square against the raw scores only {chi2_raw:.2}"
    );
}

#[test]
fn bad_prompts_and_configs_are_errors_naming_what() {
    let lm = Bigram::new();
    let device = Default::default();
    let empty = Prompt::ids(Tensor::<B, 2, Int>::zeros([1, 0], &device));
    let err = Generator::new(base())
        .unwrap()
        .generate(&lm, empty)
        .unwrap_err();
    assert!(
        matches!(err, Error::BadPrompt { .. }) && err.to_string().contains("empty"),
        "{err}"
    );

    let mask = Tensor::<B, 2, Int>::ones([1, 3], &device);
    let err = Generator::new(base())
        .unwrap()
        .generate(&lm, Prompt::ids(ids(&[&[1, 2]])).with_attention_mask(mask))
        .unwrap_err();
    assert!(err.to_string().contains("attention_mask"), "{err}");

    let too_short = GenerationConfig {
        max_new_tokens: None,
        max_length: Some(2),
        ..base()
    };
    let err = Generator::new(too_short)
        .unwrap()
        .generate(&lm, Prompt::ids(ids(&[&[1, 2]])))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { fields, .. } if fields == &["max_length"]),
        "{err}"
    );

    let bad_word = GenerationConfig {
        bad_words_ids: Some(vec![vec![99]]),
        ..base()
    };
    let err = Generator::new(bad_word)
        .unwrap()
        .generate(&lm, Prompt::ids(ids(&[&[1]])))
        .unwrap_err();
    assert!(err.to_string().contains("99"), "{err}");

    let beams = GenerationConfig {
        num_beams: 2,
        ..base()
    };
    let mut generator = Generator::new(beams).unwrap();
    let err = generator
        .stream(&lm, Prompt::ids(ids(&[&[1]])))
        .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidConfig { fields, .. } if fields == &["num_beams"]),
        "{err}"
    );

    let err = Generator::new(base())
        .unwrap()
        .generate(
            &lm,
            Prompt::embeds(Tensor::<B, 3>::zeros([1, 2, 4], &device)),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::Model(_)) && err.to_string().contains("embeddings"),
        "{err}"
    );
}

#[test]
fn nan_logits_and_empty_distributions_are_errors() {
    let lm = Bigram {
        nan_after: Some(3),
        ..Bigram::new()
    };
    let err = Generator::new(base())
        .unwrap()
        .generate(&lm, Prompt::ids(ids(&[&[1]])))
        .unwrap_err();
    assert!(matches!(err, Error::NanLogits { step: 2, row: 0 }), "{err}");

    /// Bans everything.
    #[derive(Debug)]
    struct Nothing;
    impl LogitsProcessor for Nothing {
        fn process(&self, _row: &RowIds<'_>, scores: &mut [f32]) {
            scores.fill(f32::NEG_INFINITY);
        }
    }
    let sampling = GenerationConfig {
        do_sample: true,
        seed: Some(1),
        ..base()
    };
    let err = Generator::new(sampling)
        .unwrap()
        .with_logits_processor(Nothing)
        .generate(&Bigram::new(), Prompt::ids(ids(&[&[1]])))
        .unwrap_err();
    assert!(matches!(err, Error::NothingToSample { .. }), "{err}");
}

#[test]
fn the_default_length_is_twenty_new_tokens() {
    let lm = Bigram::new();
    let config = GenerationConfig {
        max_new_tokens: None,
        eos_token_id: vec![],
        ..base()
    };
    let out = Generator::new(config)
        .unwrap()
        .generate(&lm, Prompt::ids(ids(&[&[1, 2]])))
        .unwrap();
    assert_eq!(out.sequences[0].len(), 22);
}

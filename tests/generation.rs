//! blip2-generation driving the OPT and T5 ports through their step traits, against transformers'
//! `generate()` on the fixtures: greedy and 3-beam ids exactly, beam scores within `Tol::BEAM_SCORES`, for a
//! single prompt and a left-padded batch of two, from ids (standalone models) and from BLIP-2's
//! `inputs_embeds`; and every row of a batch equal to its own run.

use blip2_generation::{GenerationConfig, GenerationOutput, Generator, LmPrompt, Prompt};
use blip2_nn::backend::FloatDType;
use blip2_opt::OptForCausalLm;
use blip2_t5::T5ForConditionalGeneration;
use blip2_testkit::{Fixture, Tol, assert_close, assert_ids_eq};
use burn::prelude::*;
use burn::tensor::TensorData;

/// The generation config transformers used, with the reference's `max_new_tokens`: a standalone model's
/// `generation_config.json`; for BLIP-2, the special tokens of `text_config`, because
/// `Blip2ForConditionalGeneration.generate` runs `language_model.generate`, whose generation config comes from
/// `text_config`, and never reads the top-level `generation_config.json` (tiny-t5's names eos `[1, 75]`; the
/// language model stops on 1 only).
fn config(fixture: &Fixture, num_beams: usize, num_return_sequences: usize) -> GenerationConfig {
    let reference = &fixture.manifest()["generation"];
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.dir().join("config.json")).unwrap())
            .unwrap();
    let from_file = match config.get("text_config") {
        Some(text) => {
            let mut tokens = serde_json::Map::new();
            for key in [
                "eos_token_id",
                "pad_token_id",
                "bos_token_id",
                "decoder_start_token_id",
            ] {
                if let Some(v) = text.get(key) {
                    tokens.insert(key.into(), v.clone());
                }
            }
            GenerationConfig::from_json_str(&serde_json::Value::Object(tokens).to_string()).unwrap()
        }
        None => GenerationConfig::from_file(fixture.dir()).expect("generation_config.json"),
    };
    GenerationConfig {
        max_new_tokens: Some(reference["max_new_tokens"].as_u64().unwrap() as usize),
        num_beams,
        num_return_sequences,
        ..from_file
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Source {
    /// `input_ids/{tag}` (standalone models).
    Ids,
    /// `lm/inputs_embeds/{tag}` (BLIP-2's soft prompt), with the ids behind it for decoder-only models.
    Embeds,
}

fn prompt<B: Backend>(
    fixture: &Fixture,
    source: Source,
    tag: &str,
    device: &B::Device,
) -> Prompt<B> {
    let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
    let ids = fixture.int_tensor::<B, 2>(&format!("input_ids/{tag}"), device);
    match source {
        Source::Ids => Prompt::ids(ids),
        Source::Embeds => {
            Prompt::embeds(fixture.tensor::<B, 3>(&format!("lm/inputs_embeds/{tag}"), device))
                .with_input_ids(ids)
        }
    }
    .with_attention_mask(mask)
}

fn check(fixture: &Fixture, key: &str, out: &GenerationOutput) {
    blip2_testkit::assert_generated(
        fixture,
        key,
        &out.to_i64_rows(),
        out.sequences_scores.as_deref(),
    );
}

trait Lm<B: Backend> {
    fn run(&self, generator: &mut Generator, prompt: Prompt<B>) -> GenerationOutput;
}

impl<B: Backend> Lm<B> for OptForCausalLm<B> {
    fn run(&self, generator: &mut Generator, prompt: Prompt<B>) -> GenerationOutput {
        generator.generate(self, prompt).expect("generate")
    }
}

impl<B: Backend> Lm<B> for T5ForConditionalGeneration<B> {
    fn run(&self, generator: &mut Generator, prompt: Prompt<B>) -> GenerationOutput {
        generator.generate_seq2seq(self, prompt).expect("generate")
    }
}

/// Greedy and 3-beam, single and batch; 2 of 3 beams returned where the fixture has them.
fn parity<B: Backend>(fixture: &Fixture, lm: &impl Lm<B>, source: Source, device: &B::Device) {
    for tag in ["single", "batch"] {
        for (beams, key) in [(1, "gen/greedy"), (3, "gen/beam3")] {
            let mut generator = Generator::new(config(fixture, beams, 1)).unwrap();
            let out = lm.run(&mut generator, prompt(fixture, source, tag, device));
            check(fixture, &format!("{key}/{tag}"), &out);
        }
    }
    if fixture.has("gen/beam3_return2/single") {
        let mut generator = Generator::new(config(fixture, 3, 2)).unwrap();
        let out = lm.run(&mut generator, prompt(fixture, source, "single", device));
        check(fixture, "gen/beam3_return2/single", &out);
    }
}

/// Each row of the batch, its padding removed, generates what it generated in the batch (greedy and beam).
fn batch_rows_match_single_runs<B: Backend>(
    fixture: &Fixture,
    lm: &impl Lm<B>,
    source: Source,
    device: &B::Device,
) {
    let masks = fixture.id_rows("attention_mask/batch");
    for (beams, key) in [(1, "gen/greedy/batch"), (3, "gen/beam3/batch")] {
        let mut generator = Generator::new(config(fixture, beams, 1)).unwrap();
        let batch = lm.run(&mut generator, prompt(fixture, source, "batch", device));
        for (row, mask) in masks.iter().enumerate() {
            // The positions the mask keeps (BLIP-2's OPT prompts pad between the image tokens and the text).
            let kept: Vec<i64> = (0..mask.len() as i64)
                .filter(|&i| mask[i as usize] != 0)
                .collect();
            let n = kept.len();
            let kept = Tensor::<B, 1, Int>::from_data(TensorData::new(kept, [n]), device);
            let full = prompt::<B>(fixture, source, "batch", device);
            let rows =
                Tensor::<B, 1, Int>::from_data(TensorData::new(vec![row as i64], [1]), device);
            let pick = |ids: Tensor<B, 2, Int>| ids.select(0, rows.clone()).select(1, kept.clone());
            let input = match full.input {
                LmPrompt::Ids(ids) => LmPrompt::Ids(pick(ids)),
                LmPrompt::Embeds(e) => {
                    LmPrompt::Embeds(e.select(0, rows.clone()).select(1, kept.clone()))
                }
            };
            let alone = Prompt {
                input,
                attention_mask: None,
                input_ids: full.input_ids.map(pick),
            };
            let single = lm.run(&mut generator, alone);
            let name = format!("{} {key} row {row} alone", fixture.name());
            let got: Vec<i64> = single.new_tokens(0).iter().map(|&t| i64::from(t)).collect();
            let want: Vec<i64> = batch
                .new_tokens(row)
                .iter()
                .map(|&t| i64::from(t))
                .collect();
            // The batch may run longer than this row (another row still going): compare what the row made.
            let n = got.len().min(want.len());
            assert_ids_eq(&name, &[got[..n].to_vec()], &[want[..n].to_vec()]);
            if let (Some(a), Some(b)) = (&single.sequences_scores, &batch.sequences_scores) {
                assert_close(
                    &format!("{name} score"),
                    &TensorData::new(vec![a[0]], [1]),
                    &TensorData::new(vec![b[row]], [1]),
                    Tol::BEAM_SCORES,
                );
            }
        }
    }
}

/// Every `gen/variant/*` of a standalone fixture: its `generate()` options (early-stopping modes, length
/// penalties, several eos ids, `num_return_sequences`, the logits processors inside the loops, `max_length`),
/// merged over the fixture's `generation_config.json` and run on the left-padded batch.
fn variants<B: Backend>(fixture: &Fixture, lm: &impl Lm<B>, device: &B::Device) {
    let variants = fixture.manifest()["generation"]["variants"]
        .as_object()
        .expect("generation variants");
    assert!(
        variants.len() >= 10,
        "{}: {} variants",
        fixture.name(),
        variants.len()
    );
    let file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture.dir().join("generation_config.json")).unwrap(),
    )
    .unwrap();
    for (name, variant) in variants {
        let mut options = file.as_object().unwrap().clone();
        for (k, v) in variant["kwargs"].as_object().unwrap() {
            options.insert(k.clone(), v.clone());
        }
        let config =
            GenerationConfig::from_json_str(&serde_json::Value::Object(options).to_string())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut generator = Generator::new(config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let out = lm.run(
            &mut generator,
            prompt(fixture, Source::Ids, "batch", device),
        );
        check(fixture, &format!("gen/variant/{name}"), &out);
    }
}

fn opt<B: Backend>(name: &str, device: &B::Device) -> (Fixture, OptForCausalLm<B>) {
    let fixture = Fixture::open(name);
    let lm = OptForCausalLm::from_pretrained(fixture.dir(), FloatDType::F32, device).unwrap();
    (fixture, lm)
}

fn t5<B: Backend>(name: &str, device: &B::Device) -> (Fixture, T5ForConditionalGeneration<B>) {
    let fixture = Fixture::open(name);
    let lm = T5ForConditionalGeneration::from_pretrained(fixture.dir(), FloatDType::F32, device)
        .unwrap();
    (fixture, lm)
}

fn opt_standalone<B: Backend>(device: &B::Device) {
    for name in ["tiny-opt-lm", "tiny-opt-lm-350m"] {
        let (fixture, lm) = opt::<B>(name, device);
        parity(&fixture, &lm, Source::Ids, device);
        batch_rows_match_single_runs(&fixture, &lm, Source::Ids, device);
        variants(&fixture, &lm, device);
    }
}

fn opt_blip2_embeds<B: Backend>(device: &B::Device) {
    let (fixture, lm) = opt::<B>("tiny-opt", device);
    parity(&fixture, &lm, Source::Embeds, device);
    batch_rows_match_single_runs(&fixture, &lm, Source::Embeds, device);
}

fn t5_standalone<B: Backend>(device: &B::Device) {
    for name in ["tiny-t5-lm", "tiny-t5-lm-v1"] {
        let (fixture, lm) = t5::<B>(name, device);
        parity(&fixture, &lm, Source::Ids, device);
        batch_rows_match_single_runs(&fixture, &lm, Source::Ids, device);
        variants(&fixture, &lm, device);
    }
}

fn t5_blip2_embeds<B: Backend>(device: &B::Device) {
    let (fixture, lm) = t5::<B>("tiny-t5", device);
    parity(&fixture, &lm, Source::Embeds, device);
    batch_rows_match_single_runs(&fixture, &lm, Source::Embeds, device);
}

blip2_testkit::backend_tests!(
    opt_standalone,
    opt_blip2_embeds,
    t5_standalone,
    t5_blip2_embeds
);

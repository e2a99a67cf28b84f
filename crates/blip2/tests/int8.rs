//! int8 language models against transformers running the same scheme: scripts/make_fixtures.py makes each
//! language-model `Linear` run blip2's int8 product (int8 weights, activations quantized per call, exact integer
//! sums: `q8_product`, `add_int8_refs`) and records logits and greedy ids with f32 activations. blip2 loads the unquantized checkpoint with `Precision::int8` on, quantizes
//! while loading and runs the int8 kernels. tiny-opt-q8 quantizes every decoder `Linear` (groups 32 and 64) and
//! its tied head (group 48, an int8 copy of the embeddings, which the lookups read too: the generator gives
//! torch's embedding table the head's dequantized values);
//! tiny-t5 only `o` and `wo` (the others' sizes have no multiple-of-16 divisor and stay in float).

use std::collections::BTreeMap;

use blip2::{Blip2Config, Blip2ForConditionalGeneration, Int8, Precision};
use blip2_generation::GenerationConfig;
use blip2_nn::backend::FloatDType;
use blip2_nn::loader::Checkpoint;
use blip2_testkit::{Fixture, Flex as B, Tol, assert_close, assert_generated};
use burn::tensor::TensorData;

fn load(
    fixture: &Fixture,
    precision: Precision,
) -> (Blip2ForConditionalGeneration<B>, Vec<(String, usize)>) {
    let config = Blip2Config::from_file(fixture.dir().join("config.json")).unwrap();
    let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
    let (model, report) = Blip2ForConditionalGeneration::<B>::load(
        &config,
        &checkpoint,
        precision,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", fixture.name()));
    (model, report.quantized)
}

fn int8_precision(fixture: &Fixture, activations: FloatDType) -> Precision {
    let group = fixture.manifest()["int8"]["group"].as_u64().unwrap() as usize;
    Precision {
        language_model: activations,
        int8: Int8 {
            vision: false,
            language_model: true,
            group,
        },
        ..Precision::F32
    }
}

fn single_logits(fixture: &Fixture, model: &Blip2ForConditionalGeneration<B>) -> TensorData {
    let device = Default::default();
    let pixels = fixture.tensor::<B, 4>("pixel_values", &device);
    let images = model
        .encode_images(pixels, false)
        .unwrap()
        .select(&[0])
        .unwrap();
    let labels = fixture
        .has("labels/single")
        .then(|| fixture.int_tensor::<B, 2>("labels/single", &device));
    model
        .forward(
            &images,
            fixture.int_tensor("input_ids/single", &device),
            Some(fixture.int_tensor("attention_mask/single", &device)),
            None,
            labels,
        )
        .unwrap()
        .logits
        .cast(burn::tensor::DType::F32)
        .to_data()
}

fn max_abs_diff(a: &TensorData, b: &TensorData) -> f32 {
    let a: Vec<f32> = a.clone().convert::<f32>().to_vec().unwrap();
    let b: Vec<f32> = b.clone().convert::<f32>().to_vec().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn int8_parity(name: &str) {
    let fixture = Fixture::open(name);
    let (model, quantized) = load(&fixture, int8_precision(&fixture, FloatDType::F32));

    // The same weights are quantized, with the same groups, as in the reference.
    let want: BTreeMap<String, usize> = fixture.manifest()["int8"]["quantized"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, g)| (format!("{k}.weight"), g.as_u64().unwrap() as usize))
        .collect();
    let got: BTreeMap<String, usize> = quantized.into_iter().collect();
    assert!(!want.is_empty(), "{name}: the fixture quantizes nothing");
    assert_eq!(got, want, "{name}: quantized weights and groups");

    // The int8 reference is not the f32 one (so this test can tell int8 from f32).
    let f32_logits = fixture.data("lm/logits/single");
    let int8_logits = fixture.data("int8/lm/logits/single");
    assert!(
        max_abs_diff(int8_logits, f32_logits) > 1e-3,
        "{name}: int8 and f32 references agree"
    );

    let logits = single_logits(&fixture, &model);
    assert_close(
        &format!("{name} int8/lm/logits/single"),
        &logits,
        int8_logits,
        Tol::LOGITS,
    );

    let device = Default::default();
    let pixels = fixture.tensor::<B, 4>("pixel_values", &device);
    let images = model
        .encode_images(pixels, false)
        .unwrap()
        .select(&[0])
        .unwrap();
    let config = GenerationConfig {
        max_new_tokens: Some(
            fixture.manifest()["generation"]["max_new_tokens"]
                .as_u64()
                .unwrap() as usize,
        ),
        num_beams: 1,
        ..model.generation_config()
    };
    let out = model
        .generate(
            &images,
            fixture.int_tensor("input_ids/single", &device),
            Some(fixture.int_tensor("attention_mask/single", &device)),
            config,
        )
        .unwrap();
    assert_generated(&fixture, "int8/gen/greedy/single", &out.to_i64_rows(), None);
}

#[test]
fn int8_opt_matches_transformers_with_the_same_scheme() {
    int8_parity("tiny-opt-q8");
}

#[test]
fn int8_t5_matches_transformers_with_the_same_scheme() {
    int8_parity("tiny-t5");
}

/// `Precision::INT8` (bf16 activations around the int8 weights, the vision tower in bf16) against the int8
/// reference (f32 activations). Measured: 0.236 (tiny-opt-q8) and 0.279 (tiny-t5, logits up to about 3.7, whose
/// bf16 run without int8 errs by 0.15 against f32, tests/precision.rs); the bounds leave room of about 2.1x and
/// 2.5x. (Before the activations were quantized too, tiny-opt-q8 measured 0.090: bf16 and f32 activations now
/// also round to different int8 steps; 0.168 before its tied head was quantized too, whose bf16 input rounds
/// to other int8 steps than the f32 one, on all 336 logits; 0.274 before the lookups read the int8 head.)
#[test]
fn int8_with_bf16_activations_stays_within_the_bf16_bound() {
    for (name, bound) in [("tiny-opt-q8", 0.5), ("tiny-t5", 0.7)] {
        let fixture = Fixture::open(name);
        let precision = Precision {
            int8: int8_precision(&fixture, FloatDType::BF16).int8,
            ..Precision::INT8
        };
        let (model, quantized) = load(&fixture, precision);
        assert!(!quantized.is_empty());
        let logits = single_logits(&fixture, &model);
        let err = max_abs_diff(&logits, fixture.data("int8/lm/logits/single"));
        // Measured: see the assertion message on failure; bf16 activations through two or three layers.
        assert!(err < bound, "{name}: bf16 activations err by {err}");
    }
}

/// Quantizing a model in memory (`with_precision`, as the benches do) gives the same int8 model as quantizing
/// while loading: the same logits, bit for bit, OPT's tied head included (`OptForCausalLm::untie_head`).
#[test]
fn int8_in_memory_equals_int8_while_loading() {
    for name in ["tiny-opt-q8", "tiny-t5"] {
        let fixture = Fixture::open(name);
        let precision = int8_precision(&fixture, FloatDType::F32);
        let (loaded, _) = load(&fixture, precision);
        let (f32_model, quantized) = load(&fixture, Precision::F32);
        assert!(quantized.is_empty());
        let in_memory = f32_model
            .with_precision(precision, &Default::default())
            .unwrap();
        let want = single_logits(&fixture, &loaded);
        let got = single_logits(&fixture, &in_memory);
        assert_eq!(max_abs_diff(&got, &want), 0.0, "{name}");
    }
}

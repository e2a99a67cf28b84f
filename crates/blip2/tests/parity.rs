//! `Blip2ForConditionalGeneration` against transformers on the BLIP-2 fixtures (tiny-opt: OPT with the
//! `<image>` prompt layout; tiny-t5: Flan-T5): the three feature methods, the soft prompt, the merged
//! `inputs_embeds`, logits and loss, and generated ids (greedy, 3 beams, 2 of 3 beams, captioning without a
//! prompt), plus every row of a padded batch against its own run.

use blip2::{Blip2ForConditionalGeneration, ImageFeatures};
use blip2_generation::GenerationConfig;
use blip2_nn::backend::FloatDType;
use blip2_testkit::{Fixture, Tol, assert_close, assert_ids_eq, assert_tensor_close};
use burn::prelude::*;
use burn::tensor::TensorData;

fn load<B: Backend>(name: &str, device: &B::Device) -> (Fixture, Blip2ForConditionalGeneration<B>) {
    let fixture = Fixture::open(name);
    let model =
        Blip2ForConditionalGeneration::from_pretrained(fixture.dir(), FloatDType::F32, device)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    (fixture, model)
}

fn images<B: Backend>(
    fixture: &Fixture,
    model: &Blip2ForConditionalGeneration<B>,
    device: &B::Device,
) -> ImageFeatures<B> {
    let pixels = fixture.tensor::<B, 4>("pixel_values", device);
    model.encode_images(pixels, false).unwrap()
}

fn features<B: Backend>(name: &str, device: &B::Device) {
    let (fixture, model) = load::<B>(name, device);
    let pixels = fixture.tensor::<B, 4>("pixel_values", device);
    let vision = model.get_image_features(pixels.clone(), false).unwrap();
    assert_tensor_close(
        &format!("{name} features/image/last_hidden_state"),
        &vision.last_hidden_state,
        fixture.data("features/image/last_hidden_state"),
        Tol::STAGE,
    );
    assert_tensor_close(
        &format!("{name} features/image/pooler_output"),
        &vision.pooler_output,
        fixture.data("features/image/pooler_output"),
        Tol::STAGE,
    );
    let qformer = model.get_qformer_features(pixels, false).unwrap();
    assert_tensor_close(
        &format!("{name} features/qformer"),
        &qformer.last_hidden_state,
        fixture.data("features/qformer"),
        Tol::STAGE,
    );
    let text = model
        .get_text_features(
            fixture.int_tensor("features/text/input_ids", device),
            Some(fixture.int_tensor("features/text/attention_mask", device)),
        )
        .unwrap();
    assert_tensor_close(
        &format!("{name} features/text"),
        &text,
        fixture.data("features/text"),
        Tol::STAGE,
    );
    let images = images(&fixture, &model, device);
    assert_tensor_close(
        &format!("{name} language_projection"),
        &images.language_inputs,
        fixture.data("language_projection"),
        Tol::STAGE,
    );
}

fn inputs_logits_and_loss<B: Backend>(name: &str, device: &B::Device) {
    let (fixture, model) = load::<B>(name, device);
    let images = images(&fixture, &model, device);
    let t5 = model.language_model.is_encoder_decoder();
    for tag in ["single", "batch"] {
        let rows = if tag == "single" { vec![0] } else { vec![0, 1] };
        let images = images.select(&rows).unwrap();
        let ids = fixture.int_tensor::<B, 2>(&format!("input_ids/{tag}"), device);
        let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
        let inputs = model
            .language_inputs(&images, ids.clone(), Some(mask.clone()))
            .unwrap();
        assert_tensor_close(
            &format!("{name} lm/inputs_embeds/{tag}"),
            &inputs.inputs_embeds,
            fixture.data(&format!("lm/inputs_embeds/{tag}")),
            Tol::STAGE,
        );
        let labels_key = format!("labels/{tag}");
        let labels = fixture
            .has(&labels_key)
            .then(|| fixture.int_tensor::<B, 2>(&labels_key, device));
        if t5 && labels.is_none() {
            continue;
        }
        let out = model
            .forward(&images, ids, Some(mask), None, labels)
            .unwrap();
        assert_tensor_close(
            &format!("{name} lm/logits/{tag}"),
            &out.logits,
            fixture.data(&format!("lm/logits/{tag}")),
            Tol::LOGITS,
        );
        let loss_key = format!("lm/loss/{tag}");
        if fixture.has(&loss_key) {
            assert_tensor_close(
                &format!("{name} {loss_key}"),
                &out.loss.expect("labels give a loss"),
                fixture.data(&loss_key),
                Tol::LOGITS,
            );
        }
    }
}

fn config(
    model: &Blip2ForConditionalGeneration<impl Backend>,
    fixture: &Fixture,
    beams: usize,
    ret: usize,
) -> GenerationConfig {
    GenerationConfig {
        max_new_tokens: Some(
            fixture.manifest()["generation"]["max_new_tokens"]
                .as_u64()
                .unwrap() as usize,
        ),
        num_beams: beams,
        num_return_sequences: ret,
        ..model.generation_config()
    }
}

fn check_ids(fixture: &Fixture, key: &str, out: &blip2_generation::GenerationOutput) {
    blip2_testkit::assert_generated(
        fixture,
        key,
        &out.to_i64_rows(),
        out.sequences_scores.as_deref(),
    );
}

fn generation<B: Backend>(name: &str, device: &B::Device) {
    let (fixture, model) = load::<B>(name, device);
    let all = images(&fixture, &model, device);
    for tag in ["single", "batch"] {
        let images = all
            .select(if tag == "single" {
                &[0][..]
            } else {
                &[0, 1][..]
            })
            .unwrap();
        let ids = fixture.int_tensor::<B, 2>(&format!("input_ids/{tag}"), device);
        let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
        for (beams, key) in [(1, "gen/greedy"), (3, "gen/beam3")] {
            let out = model
                .generate(
                    &images,
                    ids.clone(),
                    Some(mask.clone()),
                    config(&model, &fixture, beams, 1),
                )
                .unwrap();
            check_ids(&fixture, &format!("{key}/{tag}"), &out);
        }
    }
    let first = all.select(&[0]).unwrap();
    let ids = fixture.int_tensor::<B, 2>("input_ids/single", device);
    let mask = fixture.int_tensor::<B, 2>("attention_mask/single", device);
    let out = model
        .generate(&first, ids, Some(mask), config(&model, &fixture, 3, 2))
        .unwrap();
    check_ids(&fixture, "gen/beam3_return2/single", &out);
    let caption_ids = fixture.int_tensor::<B, 2>("gen/greedy/noprompt/input_ids", device);
    let out = model
        .generate(&first, caption_ids, None, config(&model, &fixture, 1, 1))
        .unwrap();
    check_ids(&fixture, "gen/greedy/noprompt", &out);
}

/// Each row of the padded batch, alone and without its padding, generates what it generated in the batch.
fn batch_rows_match_single_runs<B: Backend>(name: &str, device: &B::Device) {
    let (fixture, model) = load::<B>(name, device);
    let all = images(&fixture, &model, device);
    let ids = fixture.id_rows("input_ids/batch");
    let masks = fixture.id_rows("attention_mask/batch");
    for beams in [1, 3] {
        let batch = model
            .generate(
                &all,
                fixture.int_tensor("input_ids/batch", device),
                Some(fixture.int_tensor("attention_mask/batch", device)),
                config(&model, &fixture, beams, 1),
            )
            .unwrap();
        for row in 0..2 {
            let kept: Vec<i64> = ids[row]
                .iter()
                .zip(&masks[row])
                .filter(|(_, m)| **m != 0)
                .map(|(t, _)| *t)
                .collect();
            let n = kept.len();
            let alone = model
                .generate(
                    &all.select(&[row]).unwrap(),
                    Tensor::from_data(TensorData::new(kept, [1, n]), device),
                    None,
                    config(&model, &fixture, beams, 1),
                )
                .unwrap();
            let got: Vec<i64> = alone.new_tokens(0).iter().map(|&t| i64::from(t)).collect();
            let want: Vec<i64> = batch
                .new_tokens(row)
                .iter()
                .map(|&t| i64::from(t))
                .collect();
            let k = got.len().min(want.len());
            assert_ids_eq(
                &format!("{name} {beams} beam(s), row {row} alone"),
                &[got[..k].to_vec()],
                &[want[..k].to_vec()],
            );
        }
    }
}

// Each model in two forms: the hub's (`tiny-opt`, `tiny-t5`: transformers 4.x config keys, Flan-T5 with
// `tie_word_embeddings: false`) and transformers 5.24's unedited `save_pretrained` output (`*-saved`: Flan-T5 with
// `tie_word_embeddings: true`, `scale_decoder_outputs: false` and its own stored head).
// `tiny-opt-q8` (sizes that are multiples of 16, for the int8 tests in int8.rs) is checked in f32 here too.
const OPT: [&str; 3] = ["tiny-opt", "tiny-opt-saved", "tiny-opt-q8"];
const T5: [&str; 2] = ["tiny-t5", "tiny-t5-saved"];

fn opt_features<B: Backend>(device: &B::Device) {
    for name in OPT {
        features::<B>(name, device);
    }
}
fn t5_features<B: Backend>(device: &B::Device) {
    for name in T5 {
        features::<B>(name, device);
    }
}
fn opt_logits_and_loss<B: Backend>(device: &B::Device) {
    for name in OPT {
        inputs_logits_and_loss::<B>(name, device);
    }
}
fn t5_logits_and_loss<B: Backend>(device: &B::Device) {
    for name in T5 {
        inputs_logits_and_loss::<B>(name, device);
    }
}
fn opt_generation<B: Backend>(device: &B::Device) {
    for name in OPT {
        generation::<B>(name, device);
        batch_rows_match_single_runs::<B>(name, device);
    }
}
fn t5_generation<B: Backend>(device: &B::Device) {
    for name in T5 {
        generation::<B>(name, device);
        batch_rows_match_single_runs::<B>(name, device);
    }
}

blip2_testkit::backend_tests!(
    opt_features,
    t5_features,
    opt_logits_and_loss,
    t5_logits_and_loss,
    opt_generation,
    t5_generation,
);

/// Training: the loss's gradients with respect to parameters of every part (the projection, the queries, a
/// cross-attention weight of the Q-Former, the vision patch embedding) equal transformers'.
/// transformers computed them in `eval()` mode: the model is built without dropout (Burn drops out whenever
/// gradients are recorded).
fn gradients<B: burn::tensor::backend::AutodiffBackend>(name: &str, device: &B::Device) {
    let fixture = Fixture::open(name);
    let config = blip2::Blip2Config::from_file(fixture.dir())
        .unwrap()
        .without_dropout();
    let checkpoint = blip2_nn::loader::Checkpoint::open(fixture.dir()).unwrap();
    let (model, _) = Blip2ForConditionalGeneration::<B>::load(
        &config,
        &checkpoint,
        blip2::Precision::F32,
        device,
    )
    .unwrap();
    let images = images(&fixture, &model, device);
    let labels = fixture.int_tensor::<B, 2>("labels/batch", device);
    let out = model
        .forward(
            &images,
            fixture.int_tensor("input_ids/batch", device),
            Some(fixture.int_tensor("attention_mask/batch", device)),
            None,
            Some(labels),
        )
        .unwrap();
    let grads = out.loss.unwrap().backward();
    let check = |key: &str, grad: Option<TensorData>| {
        let grad = grad.unwrap_or_else(|| panic!("{name}: no gradient for {key}"));
        assert_close(
            &format!("{name} grad/{key}"),
            &grad,
            fixture.data(&format!("grad/{key}")),
            Tol::LOGITS,
        );
    };
    // Burn keeps a Linear weight as [in, out]; transformers as [out, in].
    check(
        "language_projection.weight",
        model
            .language_projection
            .weight
            .grad(&grads)
            .map(|g| g.transpose().to_data()),
    );
    check(
        "query_tokens",
        model.qformer.query_tokens.grad(&grads).map(|g| g.to_data()),
    );
    let cross = model.qformer.qformer.encoder.layer[0]
        .crossattention
        .as_ref()
        .expect("layer 0 cross-attends");
    check(
        "qformer.encoder.layer.0.crossattention.attention.query.weight",
        cross
            .attention
            .query
            .weight
            .grad(&grads)
            .map(|g| g.transpose().to_data()),
    );
    check(
        "vision_model.embeddings.patch_embedding.weight",
        model
            .vision_model
            .embeddings
            .patch_embedding
            .weight
            .grad(&grads)
            .map(|g| g.to_data()),
    );
}

#[test]
fn opt_gradients() {
    for name in OPT {
        gradients::<burn::backend::Autodiff<blip2_testkit::Flex>>(name, &Default::default());
    }
}

#[test]
fn t5_gradients() {
    for name in T5 {
        gradients::<burn::backend::Autodiff<blip2_testkit::Flex>>(name, &Default::default());
    }
}

/// A config without `image_token_index` (older transformers) puts the queries in front of the text embeddings
/// and extends the mask. On a prompt without padding that is the `<image>` layout with the `<image>` ids
/// dropped, so the generated tokens must equal the fixture's.
fn legacy_prompt_layout<B: Backend>(device: &B::Device) {
    let (fixture, mut model) = load::<B>("tiny-opt", device);
    let images = images(&fixture, &model, device).select(&[0]).unwrap();
    let ids = fixture.int_tensor::<B, 2>("input_ids/single", device);
    let mask = fixture.int_tensor::<B, 2>("attention_mask/single", device);
    let current = model
        .language_inputs(&images, ids.clone(), Some(mask.clone()))
        .unwrap();
    let n = model.config.num_query_tokens();
    let len = ids.dims()[1];
    let text_ids = ids.clone().slice([0..1, n..len]);
    let text_mask = mask.slice([0..1, n..len]);
    model.config.image_token_index = None;
    let legacy = model
        .language_inputs(&images, text_ids.clone(), Some(text_mask.clone()))
        .unwrap();
    assert!(legacy.input_ids.is_none());
    assert_tensor_close(
        "legacy inputs_embeds",
        &legacy.inputs_embeds,
        &current.inputs_embeds.to_data(),
        Tol::EXACT,
    );
    assert_eq!(
        legacy.attention_mask.to_data(),
        current.attention_mask.to_data()
    );
    let out = model
        .generate(
            &images,
            text_ids,
            Some(text_mask),
            config(&model, &fixture, 1, 1),
        )
        .unwrap();
    // Without ids behind the queries only new tokens come back.
    let want = fixture.id_rows("gen/greedy/single");
    let got: Vec<i64> = out.sequences[0].iter().map(|&t| i64::from(t)).collect();
    assert_eq!(got[..], want[0][len..], "legacy layout new tokens");
}

#[test]
fn legacy_layout() {
    legacy_prompt_layout::<blip2_testkit::Flex>(&Default::default());
}

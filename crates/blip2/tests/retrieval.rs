//! The retrieval models against transformers on tiny-itm (`Blip2ForImageTextRetrieval` with its Q-Former text
//! tower, `<image>` prompt layout): image-text matching logits and image-text contrast (logits, both
//! embeddings, the Q-Former outputs behind them), the same numbers from embeddings encoded once and scored in
//! pairs, `Blip2VisionModelWithProjection` and `Blip2TextModelWithProjection`, half precision, strict loading
//! (and what the projection models ignore), and bad inputs as errors.

use std::collections::BTreeSet;
use std::path::Path;

use blip2::{
    Blip2Config, Blip2ForImageTextRetrieval, Blip2TextModelWithProjection,
    Blip2VisionModelWithProjection, EncodedTexts, Error, Precision,
};
use blip2_nn::backend::{FloatDType, supported_float_dtypes};
use blip2_nn::loader::{Checkpoint, KeyMap, LoadReport, save_module};
use blip2_qformer::qformer_key_map;
use blip2_testkit::{Fixture, Tol, assert_close, assert_ids_eq, assert_tensor_close};
use burn::nn::LinearConfig;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

const NAME: &str = "tiny-itm";

fn load<B: Backend>(device: &B::Device) -> (Fixture, Blip2ForImageTextRetrieval<B>) {
    let fixture = Fixture::open(NAME);
    let model = Blip2ForImageTextRetrieval::from_pretrained(fixture.dir(), FloatDType::F32, device)
        .unwrap_or_else(|e| panic!("{NAME}: {e}"));
    (fixture, model)
}

/// The processor's output: `<image>` x 4, then `[CLS] text [SEP]`, right-padded.
fn processor_inputs<B: Backend>(
    fixture: &Fixture,
    device: &B::Device,
) -> (Tensor<B, 4>, Tensor<B, 2, Int>, Tensor<B, 2, Int>) {
    (
        fixture.tensor("pixel_values", device),
        fixture.int_tensor("input_ids", device),
        fixture.int_tensor("attention_mask", device),
    )
}

fn rows<B: Backend>(t: Tensor<B, 2, Int>) -> Vec<Vec<i64>> {
    let [batch, len] = t.dims();
    let v: Vec<i64> = t.into_data().convert::<i64>().into_vec().unwrap();
    (0..batch)
        .map(|b| v[b * len..(b + 1) * len].to_vec())
        .collect()
}

fn same<B: Backend>(name: &str, got: Tensor<B, 2>, want: Tensor<B, 2>) {
    assert_close(name, &got.into_data(), &want.into_data(), Tol::EXACT);
}

/// `use_image_text_matching_head=True`: `itm_head` on the query rows, mean over the queries.
fn image_text_matching<B: Backend>(device: &B::Device) {
    let (fixture, model) = load::<B>(device);
    let (pixels, ids, mask) = processor_inputs(&fixture, device);
    let out = model.forward(pixels, ids, Some(mask), true).unwrap();
    assert_tensor_close(
        "itm/logits",
        &out.logits_per_image,
        fixture.data("itm/logits"),
        Tol::LOGITS,
    );
    assert_eq!(out.logits_per_text.dims(), [2, 2]);
    same(
        "itm logits_per_text",
        out.logits_per_text,
        out.logits_per_image.transpose(),
    );
    assert_tensor_close(
        "itm/qformer/last_hidden_state",
        &out.text_model_output.last_hidden_state,
        fixture.data("itm/qformer/last_hidden_state"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "vision/last_hidden_state",
        &out.vision_model_output.last_hidden_state,
        fixture.data("vision/last_hidden_state"),
        Tol::STAGE,
    );
    assert!(out.text_embeds.is_none() && out.image_embeds.is_none());
}

/// `use_image_text_matching_head=False`: every image against every text, best query.
fn image_text_contrast<B: Backend>(device: &B::Device) {
    let (fixture, model) = load::<B>(device);
    let (pixels, ids, mask) = processor_inputs(&fixture, device);
    let out = model.forward(pixels, ids, Some(mask), false).unwrap();
    assert_tensor_close(
        "itc/logits_per_image",
        &out.logits_per_image,
        fixture.data("itc/logits_per_image"),
        Tol::LOGITS,
    );
    same(
        "itc logits_per_text",
        out.logits_per_text,
        out.logits_per_image.transpose(),
    );
    assert_tensor_close(
        "itc/image_embeds",
        &out.image_embeds.unwrap(),
        fixture.data("itc/image_embeds"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "itc/text_embeds",
        &out.text_embeds.unwrap(),
        fixture.data("itc/text_embeds"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "itc/text_qformer/last_hidden_state",
        &out.text_model_output.last_hidden_state,
        fixture.data("itc/text_qformer/last_hidden_state"),
        Tol::STAGE,
    );
}

/// Images and texts encoded once give the same numbers, paired any way.
fn encoded_once_scored_in_pairs<B: Backend>(device: &B::Device) {
    let (fixture, model) = load::<B>(device);
    let (pixels, ids, mask) = processor_inputs(&fixture, device);
    let (text_ids, text_mask) = model.text_inputs(ids.clone(), Some(mask.clone())).unwrap();
    assert_ids_eq(
        "text/input_ids",
        &rows(text_ids.clone()),
        &fixture.id_rows("text/input_ids"),
    );
    assert_ids_eq(
        "text/attention_mask",
        &rows(text_mask.clone()),
        &fixture.id_rows("text/attention_mask"),
    );

    let images = model.encode_images(pixels.clone(), false).unwrap();
    let texts = model.encode_texts(text_ids, Some(text_mask)).unwrap();
    assert_eq!((images.len(), texts.len()), (2, 2));
    assert_tensor_close(
        "encoded itc/image_embeds",
        &images.image_embeds,
        fixture.data("itc/image_embeds"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "encoded itc/text_embeds",
        &texts.text_embeds,
        fixture.data("itc/text_embeds"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "similarity",
        &images.similarity(&texts).unwrap(),
        fixture.data("itc/logits_per_image"),
        Tol::LOGITS,
    );
    let diagonal = model
        .match_pairs(&images, &texts, &[(0, 0), (1, 1)])
        .unwrap();
    assert_tensor_close(
        "match_pairs diagonal",
        &diagonal,
        fixture.data("itm/logits"),
        Tol::LOGITS,
    );

    // The crossed pairs against transformers' layout with the images swapped (our forward on the
    // processor's output, checked above), and the diagonal again in a third row.
    let crossed = model
        .match_pairs(&images, &texts, &[(1, 0), (0, 1), (1, 1)])
        .unwrap();
    let swapped = pixels.select(0, Tensor::from_ints([1, 0], device));
    let want = model
        .forward(swapped, ids, Some(mask), true)
        .unwrap()
        .logits_per_image;
    assert_tensor_close(
        "match_pairs crossed",
        &crossed.clone().narrow(0, 0, 2),
        &want.into_data(),
        Tol::STAGE,
    );
    assert_tensor_close(
        "match_pairs (1, 1)",
        &crossed.narrow(0, 2, 1),
        &diagonal.clone().narrow(0, 1, 1).into_data(),
        Tol::STAGE,
    );

    // A padded row gives what it gives alone without its padding; no mask means no padding.
    let text_rows = fixture.id_rows("text/input_ids");
    let kept: Vec<i64> = text_rows[1]
        .iter()
        .zip(&fixture.id_rows("text/attention_mask")[1])
        .filter(|(_, m)| **m == 1)
        .map(|(t, _)| *t)
        .collect();
    assert!(kept.len() < text_rows[1].len(), "row 1 is padded");
    let n = kept.len();
    let alone = model
        .encode_texts(
            Tensor::from_data(TensorData::new(kept, [1, n]), device),
            None,
        )
        .unwrap();
    assert_tensor_close(
        "text row 1 alone",
        &alone.text_embeds,
        &texts.text_embeds.clone().narrow(0, 1, 1).into_data(),
        Tol::STAGE,
    );
    let one_text = model.match_pairs(&images, &alone, &[(1, 0)]).unwrap();
    assert_tensor_close(
        "match_pairs text row 1 alone",
        &one_text,
        &diagonal.narrow(0, 1, 1).into_data(),
        Tol::STAGE,
    );

    // Contrast needs only the embeddings.
    let light = images.without_vision();
    assert_tensor_close(
        "similarity without vision",
        &light.similarity(&texts).unwrap(),
        fixture.data("itc/logits_per_image"),
        Tol::LOGITS,
    );
    let err = model.match_pairs(&light, &texts, &[(0, 0)]).unwrap_err();
    assert!(
        err.to_string().contains("without their vision output"),
        "{err}"
    );
}

/// Configs without `image_token_index` (older transformers): the ids are the text itself, and the numbers are
/// the same. A fresh model (random weights) gives the shapes.
fn legacy_layout_and_init<B: Backend>(device: &B::Device) {
    let fixture = Fixture::open(NAME);
    let mut config = Blip2Config::from_file(fixture.dir()).unwrap();
    config.image_token_index = None;
    let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
    let (model, _) =
        Blip2ForImageTextRetrieval::<B>::load(&config, &checkpoint, Precision::F32, device)
            .unwrap();
    let pixels = fixture.tensor::<B, 4>("pixel_values", device);
    let ids = fixture.int_tensor::<B, 2>("text/input_ids", device);
    let mask = fixture.int_tensor::<B, 2>("text/attention_mask", device);
    let (same_ids, _) = model.text_inputs(ids.clone(), None).unwrap();
    assert_ids_eq("legacy text_inputs", &rows(same_ids), &rows(ids.clone()));
    for (itm, key) in [(true, "itm/logits"), (false, "itc/logits_per_image")] {
        let out = model
            .forward(pixels.clone(), ids.clone(), Some(mask.clone()), itm)
            .unwrap();
        assert_tensor_close(
            &format!("legacy {key}"),
            &out.logits_per_image,
            fixture.data(key),
            Tol::LOGITS,
        );
    }

    let fresh = Blip2ForImageTextRetrieval::<B>::init(&config, Precision::F32, device).unwrap();
    let images = fresh.encode_images(pixels, false).unwrap();
    let texts = fresh.encode_texts(ids, Some(mask)).unwrap();
    assert_eq!(images.image_embeds.dims(), [2, 4, 12]);
    assert_eq!(texts.text_embeds.dims(), [2, 12]);
    assert_eq!(images.similarity(&texts).unwrap().dims(), [2, 2]);
    assert_eq!(
        fresh
            .match_pairs(&images, &texts, &[(0, 1)])
            .unwrap()
            .dims(),
        [1, 2]
    );
    let vision =
        Blip2VisionModelWithProjection::<B>::init(&config, Precision::F32, device).unwrap();
    let text = Blip2TextModelWithProjection::<B>::init(&config, Precision::F32, device).unwrap();
    assert!(vision.qformer.embeddings.is_none() && text.qformer.embeddings.is_some());
}

/// `Blip2VisionModelWithProjection` and `Blip2TextModelWithProjection` from the same checkpoint.
fn projection_models<B: Backend>(device: &B::Device) {
    let fixture = Fixture::open(NAME);
    let vision = Blip2VisionModelWithProjection::<B>::from_pretrained(
        fixture.dir(),
        FloatDType::F32,
        device,
    )
    .unwrap();
    assert!(
        vision.qformer.embeddings.is_none(),
        "no text tower is built"
    );
    let out = vision
        .forward(fixture.tensor("pixel_values", device), false)
        .unwrap();
    assert_tensor_close(
        "vision_with_projection/image_embeds",
        &out.image_embeds,
        fixture.data("vision_with_projection/image_embeds"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "vision_with_projection last_hidden_state (the ViT's)",
        &out.last_hidden_state,
        fixture.data("vision/last_hidden_state"),
        Tol::STAGE,
    );

    let text =
        Blip2TextModelWithProjection::<B>::from_pretrained(fixture.dir(), FloatDType::F32, device)
            .unwrap();
    let out = text
        .forward(
            fixture.int_tensor("text/input_ids", device),
            Some(fixture.int_tensor("text/attention_mask", device)),
        )
        .unwrap();
    assert_tensor_close(
        "text_with_projection/text_embeds",
        &out.text_embeds,
        fixture.data("text_with_projection/text_embeds"),
        Tol::STAGE,
    );
    assert_tensor_close(
        "text_with_projection last_hidden_state",
        &out.last_hidden_state,
        fixture.data("itc/text_qformer/last_hidden_state"),
        Tol::STAGE,
    );
    // Its CLS row is contrast's text embedding.
    assert_tensor_close(
        "text_with_projection CLS row",
        &out.text_embeds.narrow(1, 0, 1).squeeze_dim::<2>(1),
        fixture.data("itc/text_embeds"),
        Tol::STAGE,
    );
}

/// f16 / bf16 (where the backend holds them) in transformers' layout: Q-Former in f32, the rest in half.
fn half_precision<B: Backend>(device: &B::Device) {
    let fixture = Fixture::open(NAME);
    for dtype in supported_float_dtypes::<B>(device) {
        if dtype == FloatDType::F32 {
            continue;
        }
        let precision = Precision::from(dtype);
        let model =
            Blip2ForImageTextRetrieval::<B>::from_pretrained(fixture.dir(), precision, device)
                .unwrap();
        assert_eq!(model.qformer.query_tokens.val().dtype(), DType::F32);
        assert_eq!(model.itm_head.weight.val().dtype(), dtype.dtype());
        let tol = if dtype == FloatDType::BF16 {
            Tol::BF16
        } else {
            Tol::HALF
        };
        let (pixels, ids, mask) = processor_inputs(&fixture, device);
        for (itm, key) in [(true, "itm/logits"), (false, "itc/logits_per_image")] {
            let out = model
                .forward(pixels.clone(), ids.clone(), Some(mask.clone()), itm)
                .unwrap();
            assert_eq!(
                out.logits_per_image.dtype(),
                dtype.dtype(),
                "{key} runs in half"
            );
            let tag = format!("{key}:{}", dtype.name());
            let close = assert_tensor_close(
                &tag,
                &out.logits_per_image.cast(DType::F32),
                fixture.data(key),
                tol,
            );
            assert!(close.max_abs_diff > 0.0, "{tag}: bit-identical to f32");
        }
    }
}

fn keys(report: &LoadReport) -> (BTreeSet<&str>, BTreeSet<&str>) {
    (
        report.loaded.iter().map(String::as_str).collect(),
        report.ignored.iter().map(String::as_str).collect(),
    )
}

/// tiny-itm loads with nothing missing or unexpected; the projection models take their part and list the rest.
fn loading_reports<B: Backend>(device: &B::Device) {
    let fixture = Fixture::open(NAME);
    let config = Blip2Config::from_file(fixture.dir()).unwrap();
    let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
    let all: BTreeSet<&str> = checkpoint.keys().collect();

    let (_, report) =
        Blip2ForImageTextRetrieval::<B>::load(&config, &checkpoint, Precision::F32, device)
            .unwrap();
    assert!(
        report.missing().is_empty() && report.unexpected().is_empty(),
        "{report}"
    );
    let (loaded, ignored) = keys(&report);
    assert_eq!(loaded, all, "every key is loaded");
    assert!(ignored.is_empty() && report.tied.is_empty());

    let (_, report) =
        Blip2VisionModelWithProjection::<B>::load(&config, &checkpoint, Precision::F32, device)
            .unwrap();
    assert!(report.is_clean(), "{report}");
    let (loaded, ignored) = keys(&report);
    assert!(loaded.is_disjoint(&ignored));
    assert_eq!(&loaded | &ignored, all);
    let text_tower = |k: &&str| {
        k.starts_with("embeddings.")
            || k.contains(".intermediate.")
            || (k.contains(".output.") && !k.contains("attention."))
    };
    let want_ignored: BTreeSet<&str> = all
        .iter()
        .copied()
        .filter(|k| {
            text_tower(k) || k.starts_with("text_projection.") || k.starts_with("itm_head.")
        })
        .collect();
    assert_eq!(ignored, want_ignored);
    assert!(ignored.contains("qformer.encoder.layer.2.output.LayerNorm.weight"));
    assert!(loaded.contains("qformer.encoder.layer.2.output_query.LayerNorm.weight"));

    let (_, report) =
        Blip2TextModelWithProjection::<B>::load(&config, &checkpoint, Precision::F32, device)
            .unwrap();
    assert!(report.is_clean(), "{report}");
    let (loaded, ignored) = keys(&report);
    let want_ignored: BTreeSet<&str> = all
        .iter()
        .copied()
        .filter(|k| {
            ["vision_model.", "vision_projection.", "itm_head."]
                .iter()
                .any(|p| k.starts_with(p))
        })
        .collect();
    assert_eq!(ignored, want_ignored);
    assert_eq!(loaded, &all - &want_ignored);
}

/// Writes the model back as shards (one per part, plus `extra` under `extra_head.`), without the parts named in
/// `drop`, with an index; returns the directory's checkpoint.
fn write_shards<B: Backend>(
    model: &Blip2ForImageTextRetrieval<B>,
    dir: &Path,
    drop: &[&str],
    extra: bool,
    device: &B::Device,
) -> Checkpoint {
    for entry in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    let meta = Default::default();
    let mut files = Vec::new();
    let mut save = |name: &str, f: &dyn Fn(&Path)| {
        if !drop.contains(&name) {
            let file = format!("{name}.safetensors");
            f(&dir.join(&file));
            files.push(file);
        }
    };
    let f32 = FloatDType::F32;
    save("vision_model", &|p| {
        save_module(
            &model.vision_model,
            p,
            &KeyMap::under("vision_model"),
            f32,
            &meta,
        )
        .unwrap();
    });
    save("qformer", &|p| {
        save_module(&model.qformer, p, &qformer_key_map(), f32, &meta).unwrap();
    });
    for (name, head) in [
        ("vision_projection", &model.vision_projection),
        ("text_projection", &model.text_projection),
        ("itm_head", &model.itm_head),
    ] {
        save(name, &|p| {
            save_module(head, p, &KeyMap::under(name), f32, &meta).unwrap()
        });
    }
    if extra {
        let linear = LinearConfig::new(3, 2).init::<B>(device);
        save("extra_head", &|p| {
            save_module(&linear, p, &KeyMap::under("extra_head"), f32, &meta).unwrap();
        });
    }
    let mut map = serde_json::Map::new();
    for file in &files {
        for key in Checkpoint::open(dir.join(file)).unwrap().keys() {
            map.insert(key.to_string(), file.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": map });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_string(&index).unwrap(),
    )
    .unwrap();
    Checkpoint::open(dir).unwrap()
}

/// The report of a failed load, its problems sorted.
fn incompatible(result: Result<impl Sized, Error>) -> LoadReport {
    match result {
        Err(Error::Nn(blip2_nn::Error::Incompatible(report))) => {
            let mut report = *report;
            report.problems.sort_by_key(ToString::to_string);
            report
        }
        Err(other) => panic!("expected an incompatible checkpoint, got {other}"),
        Ok(_) => panic!("expected an incompatible checkpoint, it loaded"),
    }
}

/// Strict over the whole checkpoint: a missing head or a foreign key fails the full model and lists the keys;
/// the projection models need only their part and ignore the rest.
fn mismatched_checkpoints<B: Backend>(device: &B::Device) {
    let (fixture, model) = load::<B>(device);
    let config = Blip2Config::from_file(fixture.dir()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f32 = Precision::F32;

    // Written back whole: loads clean and gives the same numbers.
    let checkpoint = write_shards(&model, dir.path(), &[], false, device);
    let (reloaded, report) =
        Blip2ForImageTextRetrieval::<B>::load(&config, &checkpoint, f32, device).unwrap();
    assert_eq!(
        report.loaded.len(),
        Checkpoint::open(fixture.dir()).unwrap().len()
    );
    let (pixels, ids, mask) = processor_inputs(&fixture, device);
    let out = reloaded.forward(pixels, ids, Some(mask), false).unwrap();
    assert_tensor_close(
        "reloaded itc/logits_per_image",
        &out.logits_per_image,
        fixture.data("itc/logits_per_image"),
        Tol::LOGITS,
    );

    let checkpoint = write_shards(&model, dir.path(), &["itm_head"], false, device);
    let report = incompatible(Blip2ForImageTextRetrieval::<B>::load(
        &config,
        &checkpoint,
        f32,
        device,
    ));
    assert_eq!(
        report.missing(),
        ["itm_head.bias", "itm_head.weight"],
        "{report}"
    );
    assert!(report.unexpected().is_empty(), "{report}");
    Blip2VisionModelWithProjection::<B>::load(&config, &checkpoint, f32, device).unwrap();
    Blip2TextModelWithProjection::<B>::load(&config, &checkpoint, f32, device).unwrap();

    let checkpoint = write_shards(&model, dir.path(), &["vision_projection"], true, device);
    let report = incompatible(Blip2ForImageTextRetrieval::<B>::load(
        &config,
        &checkpoint,
        f32,
        device,
    ));
    assert_eq!(
        report.missing(),
        ["vision_projection.bias", "vision_projection.weight"],
        "{report}"
    );
    assert_eq!(
        report.unexpected(),
        ["extra_head.bias", "extra_head.weight"],
        "{report}"
    );
    let report = incompatible(Blip2VisionModelWithProjection::<B>::load(
        &config,
        &checkpoint,
        f32,
        device,
    ));
    assert_eq!(
        report.missing(),
        ["vision_projection.bias", "vision_projection.weight"]
    );
    let (_, report) =
        Blip2TextModelWithProjection::<B>::load(&config, &checkpoint, f32, device).unwrap();
    assert!(
        report.ignored.iter().any(|k| k == "extra_head.weight"),
        "{report}"
    );

    // A captioning checkpoint has no text tower.
    let opt = Fixture::open("tiny-opt");
    for err in [
        Blip2ForImageTextRetrieval::<B>::from_pretrained(opt.dir(), f32, device).unwrap_err(),
        Blip2TextModelWithProjection::<B>::from_pretrained(opt.dir(), f32, device).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::UnsupportedConfig { key, .. } if key == "qformer_config.use_qformer_text_input"),
            "{err}"
        );
    }
    let report = incompatible(Blip2VisionModelWithProjection::<B>::from_pretrained(
        opt.dir(),
        f32,
        device,
    ));
    assert_eq!(
        report.missing(),
        ["vision_projection.bias", "vision_projection.weight"]
    );
}

fn expect_bad_input<T>(result: Result<T, Error>, says: &str) {
    match result {
        Err(err @ Error::BadInput { .. }) => {
            assert!(err.to_string().contains(says), "{says}: {err}");
        }
        Err(other) => panic!("{says}: expected Error::BadInput, got {other:?}"),
        Ok(_) => panic!("{says}: expected an error"),
    }
}

fn expect_qformer_error<T>(result: Result<T, Error>, says: &str) {
    match result {
        Err(err @ Error::QFormer(_)) => assert!(err.to_string().contains(says), "{says}: {err}"),
        Err(other) => panic!("{says}: expected a Q-Former error, got {other:?}"),
        Ok(_) => panic!("{says}: expected an error"),
    }
}

/// Bad inputs are errors, not panics.
fn bad_inputs<B: Backend>(device: &B::Device) {
    let (fixture, model) = load::<B>(device);
    let (pixels, ids, mask) = processor_inputs(&fixture, device);
    let text_ids = fixture.int_tensor::<B, 2>("text/input_ids", device);
    let text_mask = fixture.int_tensor::<B, 2>("text/attention_mask", device);

    expect_bad_input(
        model.forward(
            pixels.clone(),
            ids.clone().narrow(0, 0, 1),
            Some(mask.clone().narrow(0, 0, 1)),
            true,
        ),
        "2 images but 1 texts",
    );
    expect_bad_input(
        model.forward(
            pixels.clone(),
            text_ids.clone(),
            Some(text_mask.clone()),
            false,
        ),
        "row 0 of input_ids does not start with 4 <image> tokens (id 132)",
    );
    expect_bad_input(
        model.forward(pixels.clone(), ids.clone().narrow(1, 0, 4), None, true),
        "nothing follows the 4 <image> tokens",
    );
    expect_bad_input(
        model.forward(pixels.clone(), ids.clone(), Some(text_mask.clone()), true),
        "attention_mask is [2, 16], input_ids [2, 20]",
    );
    let masked_query = mask.clone().slice_fill(s![1, 2], 0);
    expect_bad_input(
        model.forward(pixels.clone(), ids.clone(), Some(masked_query), false),
        "row 1 of attention_mask masks some of its <image> tokens",
    );
    expect_bad_input(
        model.encode_texts(Tensor::<B, 2, Int>::zeros([0, 3], device), None),
        "no rows",
    );
    expect_qformer_error(
        model.encode_texts(Tensor::<B, 2, Int>::zeros([2, 0], device), None),
        "need at least one token",
    );
    expect_qformer_error(
        model.encode_texts(ids.clone(), Some(mask.clone())),
        "token id 132 is outside the vocabulary",
    );
    let big = Tensor::<B, 4>::zeros([2, 3, 34, 34], device); // 36 patches, the table has 16
    for (name, pixels) in [
        ("one channel", pixels.clone().narrow(1, 0, 1)),
        ("too large", big),
    ] {
        match model.encode_images(pixels.clone(), false) {
            Err(Error::Vision(_)) => {}
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
        match model.forward(pixels, ids.clone(), Some(mask.clone()), true) {
            Err(Error::Vision(_)) => {}
            other => panic!("{name}: {:?}", other.map(|_| ())),
        }
    }

    let images = model.encode_images(pixels, false).unwrap();
    let texts = model
        .encode_texts(text_ids.clone(), Some(text_mask.clone()))
        .unwrap();
    expect_bad_input(model.match_pairs(&images, &texts, &[]), "no pairs");
    expect_bad_input(
        model.match_pairs(&images, &texts, &[(0, 0), (2, 1)]),
        "pair (2, 1) is out of range: there are 2 images and 2 texts",
    );
    let narrow = EncodedTexts {
        text_embeds: Tensor::<B, 2>::zeros([2, 5], device),
        ..texts.clone()
    };
    expect_bad_input(
        images.similarity(&narrow),
        "image embeddings are 12 wide, text embeddings 5",
    );
    let none = EncodedTexts {
        text_embeds: Tensor::<B, 2>::zeros([0, 12], device),
        ..texts
    };
    expect_bad_input(images.similarity(&none), "2 images and 0 texts");

    let text =
        Blip2TextModelWithProjection::<B>::from_pretrained(fixture.dir(), FloatDType::F32, device)
            .unwrap();
    expect_bad_input(
        text.forward(text_ids.clone(), Some(text_mask.narrow(1, 0, 3))),
        "attention_mask is [2, 3], input_ids [2, 16]",
    );
    expect_qformer_error(
        text.forward(ids, None),
        "token id 132 is outside the vocabulary",
    );
}

blip2_testkit::backend_tests!(
    image_text_matching,
    image_text_contrast,
    encoded_once_scored_in_pairs,
    legacy_layout_and_init,
    projection_models,
    half_precision,
    loading_reports,
    mismatched_checkpoints,
    bad_inputs,
);

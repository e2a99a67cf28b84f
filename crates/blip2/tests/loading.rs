//! Loading a whole BLIP-2 checkpoint: strict over every key, the hub checkpoints' key sets, and typed errors
//! that name the key or file for a missing shard, a wrong shape, an unexpected tensor, a config that does not
//! fit the weights, and an unknown language model.

use std::collections::BTreeMap;
use std::path::Path;

use blip2::{Blip2Config, Blip2ForConditionalGeneration, Error, Precision, TextConfig};
use blip2_nn::backend::FloatDType;
use blip2_nn::loader::Checkpoint;
use blip2_opt::OptConfig;
use blip2_qformer::Blip2QFormerConfig;
use blip2_t5::T5Config;
use blip2_testkit::{Fixture, Flex};
use blip2_vision::Blip2VisionConfig;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

type B = Flex;

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// The fixture's tensors as (key, dtype, shape, bytes).
fn tensors(dir: &Path) -> Vec<(String, Dtype, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write(path: &Path, tensors: &[(String, Dtype, Vec<usize>, Vec<u8>)]) {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(k, d, s, b)| (k.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn load(dir: &Path) -> Result<Blip2ForConditionalGeneration<B>, Error> {
    Blip2ForConditionalGeneration::from_pretrained(dir, FloatDType::F32, &Default::default())
}

#[test]
fn fixtures_load_every_key_and_nothing_else() {
    for name in ["tiny-opt", "tiny-t5", "tiny-opt-saved", "tiny-t5-saved"] {
        let fixture = Fixture::open(name);
        let config = Blip2Config::from_file(fixture.dir()).unwrap();
        let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
        let (model, report) = Blip2ForConditionalGeneration::<B>::load(
            &config,
            &checkpoint,
            Precision::F32,
            &Default::default(),
        )
        .unwrap();
        assert!(report.is_clean(), "{name}: {report}");
        assert_eq!(
            report.loaded.len() + report.ignored.len(),
            checkpoint.len(),
            "{name}"
        );
        // The expected key set is the file's, shapes included.
        let file: BTreeMap<String, Vec<usize>> = checkpoint
            .keys()
            .map(|k| (k.to_string(), checkpoint.info(k).unwrap().shape.clone()))
            .collect();
        let mut expected = model.expected_keys();
        for tied in &report.ignored {
            expected.insert(tied.clone(), file[tied].clone());
        }
        assert_eq!(expected, file, "{name}");
    }
}

/// The hub checkpoints' `config.json` values (BLIP-2 paper / model cards): ViT-g at 224, the BERT-base
/// Q-Former with 32 queries, OPT-2.7b / -6.7b or Flan-T5-XL.
fn hub_config(text: TextConfig) -> Blip2Config {
    let mut config = Blip2Config::from_vision_qformer_text_configs(
        Blip2VisionConfig::vit_g(224),
        Blip2QFormerConfig::default(),
        text,
    )
    .unwrap();
    config.image_token_index = Some(50265);
    config
}

#[test]
fn hub_configs_expect_exactly_the_hub_keys() {
    let opt_6_7b = OptConfig {
        hidden_size: 4096,
        ffn_dim: 16384,
        ..OptConfig::opt_2_7b_blip2()
    };
    for (name, text) in [
        (
            "blip2-opt-2.7b",
            TextConfig::Opt(OptConfig::opt_2_7b_blip2()),
        ),
        ("blip2-opt-6.7b", TextConfig::Opt(opt_6_7b)),
        (
            "blip2-flan-t5-xl",
            TextConfig::T5(T5Config::flan_t5_xl_blip2()),
        ),
    ] {
        let config = hub_config(text);
        let model =
            Blip2ForConditionalGeneration::<B>::init(&config, Precision::F32, &Default::default())
                .unwrap(); // lazy: nothing allocated
        let theirs = blip2_testkit::real_keys(name, |_| true);
        let ours = model.expected_keys();
        let only_ours: Vec<_> = ours.keys().filter(|k| !theirs.contains_key(*k)).collect();
        let only_theirs: Vec<_> = theirs.keys().filter(|k| !ours.contains_key(*k)).collect();
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "{name}: only ours {only_ours:?}, only the hub's {only_theirs:?}"
        );
        assert_eq!(ours, theirs, "{name}: shapes");
    }
}

#[test]
fn a_wrong_shape_names_the_key() {
    let fixture = Fixture::open("tiny-opt");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture.dir(), dir.path());
    let mut all = tensors(fixture.dir());
    let entry = all
        .iter_mut()
        .find(|(k, ..)| k == "language_projection.weight")
        .unwrap();
    entry.2 = vec![entry.2[1], entry.2[0]]; // transposed: same bytes, wrong shape
    write(&dir.path().join("model.safetensors"), &all);
    let err = load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::Nn(blip2_nn::Error::Incompatible(_)))
            && message.contains("language_projection.weight")
            && message.contains("shape mismatch"),
        "{message}"
    );
}

#[test]
fn an_unexpected_tensor_names_the_key() {
    let fixture = Fixture::open("tiny-t5");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture.dir(), dir.path());
    let mut all = tensors(fixture.dir());
    all.push((
        "itm_head.weight".into(),
        Dtype::F32,
        vec![2, 2],
        vec![0; 16],
    ));
    write(&dir.path().join("model.safetensors"), &all);
    let err = load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("unexpected: `itm_head.weight`"),
        "{message}"
    );
}

#[test]
fn a_missing_shard_names_the_file() {
    let fixture = Fixture::open("tiny-opt");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture.dir(), dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let all = tensors(fixture.dir());
    let (vision, rest): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|(k, ..)| k.starts_with("vision_model."));
    write(
        &dir.path().join("model-00001-of-00002.safetensors"),
        &vision,
    );
    let mut weight_map = serde_json::Map::new();
    for (k, ..) in &vision {
        weight_map.insert(k.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (k, ..) in &rest {
        weight_map.insert(k.clone(), "model-00002-of-00002.safetensors".into());
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(
        dir.path().join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let err = load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, Error::Nn(blip2_nn::Error::MissingShard { .. }))
            && message.contains("model-00002-of-00002.safetensors"),
        "{message}"
    );
    // With the second shard written, the sharded model loads.
    write(&dir.path().join("model-00002-of-00002.safetensors"), &rest);
    load(dir.path()).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
}

#[test]
fn a_config_that_does_not_fit_the_weights_names_the_key() {
    let fixture = Fixture::open("tiny-opt");
    let hidden = Blip2Config::from_file(fixture.dir())
        .unwrap()
        .vision_config
        .hidden_size;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture.dir(), dir.path());

    // The Q-Former reads the vision width whatever `encoder_hidden_size` says (transformers' `Blip2Config`
    // overwrites it): a wrong value there alone loads and computes as transformers does.
    edit_config(dir.path(), |c| {
        c["qformer_config"]["encoder_hidden_size"] = (hidden * 2).into();
    });
    let config = Blip2Config::from_file(dir.path()).unwrap();
    assert_eq!(config.qformer.qformer.encoder_hidden_size, hidden);
    load(dir.path()).unwrap();

    // Another vision width: the vision tower's and the Q-Former's cross-attention weights have the other width.
    edit_config(dir.path(), |c| {
        c["vision_config"]["hidden_size"] = (hidden * 2).into()
    });
    let err = load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("vision_model.") && message.contains("shape mismatch"),
        "{message}"
    );
    // The message lists the first few mismatches of each kind (LoadReport::MAX_LISTED); the report has all.
    let Error::Nn(blip2_nn::Error::Incompatible(report)) = &err else {
        panic!("expected Incompatible, got {err:?}")
    };
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.to_string().contains("crossattention")),
        "{message}"
    );
}

/// `image_token_id` is transformers' other name for `image_token_index`; with both, `image_token_id` wins.
#[test]
fn image_token_id_is_image_token_index() {
    let text =
        std::fs::read_to_string(Fixture::open("tiny-opt").dir().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    let index = config["image_token_index"].as_u64().unwrap() as u32;
    let parse = |c: &serde_json::Value| Blip2Config::from_json_str(&c.to_string(), "config.json");
    config["image_token_id"] = config["image_token_index"].take();
    config.as_object_mut().unwrap().remove("image_token_index");
    assert_eq!(parse(&config).unwrap().image_token_index, Some(index));
    config["image_token_index"] = (index + 1).into();
    assert_eq!(parse(&config).unwrap().image_token_index, Some(index));
    config["image_token_id"] = "x".into();
    let err = parse(&config).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedConfig { key, .. } if key == "image_token_id"),
        "{err}"
    );
}

/// The language model's head as transformers 5.24 decides it, on the directories that transformers saved
/// (`tiny-t5-saved`: its own `lm_head.weight` with `tie_word_embeddings: true, scale_decoder_outputs: false`;
/// `tiny-opt-saved`: the tied head absent). Each of the fixture's head variants sets the text config's
/// `tie_word_embeddings` (and for T5 `scale_decoder_outputs`) absent, true or false, with `lm_head.weight` stored
/// (values of its own, differing from the embeddings) or absent; the single prompt's logits must equal the ones
/// transformers computed on that very directory. A stored head is never ignored.
#[test]
fn the_head_is_the_one_transformers_uses_under_every_flag() {
    for name in ["tiny-t5-saved", "tiny-opt-saved"] {
        let fixture = Fixture::open(name);
        let head_key = "language_model.lm_head.weight";
        let head = fixture.data("head/lm_head.weight");
        let head_bytes: Vec<u8> = head
            .as_slice::<f32>()
            .unwrap()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let embeddings_key = if name == "tiny-opt-saved" {
            "language_model.model.decoder.embed_tokens.weight"
        } else {
            "language_model.shared.weight"
        };
        let variants = fixture.manifest()["head_variants"].as_array().unwrap();
        assert_eq!(
            variants.len(),
            if name == "tiny-opt-saved" { 6 } else { 19 }
        );
        for variant in variants {
            let vname = variant["name"].as_str().unwrap();
            let stored = variant["head_stored"].as_bool().unwrap();
            // The last variant stores the head without the embeddings (its flags as saved): transformers takes the
            // embeddings from the head.
            let embeddings = variant["embeddings_stored"].as_bool().unwrap();
            let dir = tempfile::tempdir().unwrap();
            copy_dir(fixture.dir(), dir.path());
            edit_config(dir.path(), |c| {
                let text = c["text_config"].as_object_mut().unwrap();
                for key in ["tie_word_embeddings", "scale_decoder_outputs"] {
                    if variant[key] == "as saved" {
                        continue;
                    }
                    text.remove(key);
                    if variant[key].is_boolean() {
                        text.insert(key.to_string(), variant[key].clone());
                    }
                }
            });
            let base: Vec<_> = tensors(fixture.dir())
                .into_iter()
                .filter(|t| t.0 != head_key && (embeddings || t.0 != embeddings_key))
                .collect();
            let mut files = base.clone();
            if stored {
                files.push((
                    head_key.to_string(),
                    Dtype::F32,
                    head.shape.to_vec(),
                    head_bytes.clone(),
                ));
            }
            write(&dir.path().join("model.safetensors"), &files);

            let model = load(dir.path()).unwrap_or_else(|e| panic!("{name} {vname}: {e}"));
            let own_head = match &model.language_model {
                blip2::LanguageModel::Opt(m) => m.lm_head.is_some(),
                blip2::LanguageModel::T5(m) => {
                    assert_eq!(
                        m.config.scales_decoder_outputs(),
                        variant["scales_decoder_outputs"].as_bool().unwrap(),
                        "{name} {vname}: output scaling"
                    );
                    m.lm_head.is_some()
                }
            };
            assert_eq!(own_head, stored, "{name} {vname}: which head");
            blip2_testkit::assert_close(
                &format!("{name} head/{vname}/logits"),
                &single_logits(&fixture, &model),
                fixture.data(&format!("head/{vname}/logits")),
                blip2_testkit::Tol::LOGITS,
            );
        }
    }

    // OPT with `tie_word_embeddings: false` and no stored head: transformers makes up a random head; blip2
    // refuses, naming the key.
    let fixture = Fixture::open("tiny-opt-saved");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture.dir(), dir.path());
    edit_config(dir.path(), |c| {
        c["text_config"]["tie_word_embeddings"] = false.into()
    });
    let message = load(dir.path()).unwrap_err().to_string();
    assert!(
        message.contains("missing: `language_model.lm_head.weight`"),
        "{message}"
    );
}

#[test]
fn unknown_language_models_and_other_configs_are_named() {
    let fixture = Fixture::open("tiny-opt");
    let text = std::fs::read_to_string(fixture.dir().join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["text_config"]["model_type"] = "llama".into();
    let err = Blip2Config::from_json_str(&config.to_string(), "config.json").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownLanguageModel { model_type, .. } if model_type == "llama"),
        "{err}"
    );
    let err = Blip2Config::from_json_str(r#"{"model_type": "opt"}"#, "config.json").unwrap_err();
    assert!(matches!(err, Error::NotABlip2Config { .. }), "{err}");
    let err = Blip2Config::from_json_str("{", "config.json").unwrap_err();
    assert!(
        matches!(err, Error::Json { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = Blip2Config::from_file(dir.path()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
}

#[test]
fn configs_read_their_parts() {
    let opt = Blip2Config::from_file(Fixture::open("tiny-opt").dir()).unwrap();
    assert!(matches!(opt.text_config, TextConfig::Opt(_)));
    assert_eq!(
        (opt.num_query_tokens(), opt.image_token_index),
        (5, Some(330))
    );
    let t5 = Blip2Config::from_file(Fixture::open("tiny-t5").dir()).unwrap();
    assert!(t5.text_config.is_encoder_decoder());
    assert_eq!(t5.text_config.generation_config().eos_token_id, [1]);
    let itm = Blip2Config::from_file(Fixture::open("tiny-itm").dir()).unwrap();
    assert_eq!(itm.image_text_hidden_size, 12);
    assert!(itm.qformer.qformer.use_qformer_text_input);
}

#[test]
fn half_precision_keeps_the_qformer_in_f32() {
    let fixture = Fixture::open("tiny-opt");
    let model = Blip2ForConditionalGeneration::<B>::from_pretrained(
        fixture.dir(),
        FloatDType::BF16,
        &Default::default(),
    )
    .unwrap();
    use burn::tensor::DType;
    assert_eq!(model.qformer.query_tokens.val().dtype(), DType::F32);
    assert_eq!(
        model.vision_model.embeddings.class_embedding.val().dtype(),
        DType::BF16
    );
    assert_eq!(model.language_projection.weight.val().dtype(), DType::BF16);
}

#[test]
fn every_problem_of_every_part_is_listed_at_once() {
    let fixture = Fixture::open("tiny-opt");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture.dir(), dir.path());
    let mut all = tensors(fixture.dir());
    all.retain(|(k, ..)| k != "vision_model.post_layernorm.bias");
    let projection = all
        .iter_mut()
        .find(|(k, ..)| k == "language_projection.weight")
        .unwrap();
    projection.2.reverse();
    all.push((
        "vision_projection.weight".into(),
        Dtype::F32,
        vec![1],
        vec![0; 4],
    ));
    write(&dir.path().join("model.safetensors"), &all);
    let message = load(dir.path()).unwrap_err().to_string();
    for expected in [
        "missing: `vision_model.post_layernorm.bias`",
        "shape mismatch: `language_projection.weight`",
        "unexpected: `vision_projection.weight`",
        "3 problems",
    ] {
        assert!(message.contains(expected), "{expected} not in: {message}");
    }
}

/// The single prompt's logits (teacher-forced for T5).
fn single_logits(
    fixture: &Fixture,
    model: &Blip2ForConditionalGeneration<B>,
) -> burn::tensor::TensorData {
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
        .to_data()
}

/// `save_weights` writes the checkpoint's own key set (shapes included) and a directory that loads back to the
/// same outputs, bit for bit, in both forms of both language models. (`cargo xtask fixtures --check` loads the
/// same re-saved directories in transformers.)
#[test]
fn saved_weights_round_trip() {
    for name in ["tiny-opt", "tiny-t5", "tiny-opt-saved", "tiny-t5-saved"] {
        let fixture = Fixture::open(name);
        let model = load(fixture.dir()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            fixture.dir().join("config.json"),
            dir.path().join("config.json"),
        )
        .unwrap();
        model
            .save_weights(dir.path().join("model.safetensors"), FloatDType::F32)
            .unwrap();
        let keys = |dir: &Path| -> BTreeMap<String, Vec<usize>> {
            tensors(dir)
                .into_iter()
                .map(|(k, _, shape, _)| (k, shape))
                .collect()
        };
        assert_eq!(keys(dir.path()), keys(fixture.dir()), "{name}: saved keys");
        let again = load(dir.path()).unwrap();
        let (before, after) = (
            single_logits(&fixture, &model),
            single_logits(&fixture, &again),
        );
        assert_eq!(before, after, "{name}: logits after the round trip");
        blip2_testkit::assert_close(
            &format!("{name} re-saved lm/logits/single"),
            &after,
            fixture.data("lm/logits/single"),
            blip2_testkit::Tol::LOGITS,
        );
    }
}

/// A dtype the device cannot hold is refused before any part loads, as the backend's error (the CLI's exit 5),
/// not as the vision tower's load failure.
#[test]
fn a_dtype_the_backend_lacks_is_named_up_front() {
    let fixture = Fixture::open("tiny-opt");
    let device = Default::default();
    let err = Blip2ForConditionalGeneration::<blip2_testkit::NdArray>::from_pretrained(
        fixture.dir(),
        Precision::from(FloatDType::BF16),
        &device,
    )
    .map(|_| ())
    .unwrap_err();
    match &err {
        Error::Nn(blip2_nn::Error::UnsupportedDtype { dtype, .. }) => {
            assert_eq!(*dtype, FloatDType::BF16);
        }
        other => panic!("want Nn(UnsupportedDtype), got {other:?}"),
    }
    assert!(err.to_string().contains("bf16"), "{err}");
}

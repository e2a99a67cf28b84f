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
    for name in ["tiny-opt", "tiny-t5"] {
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

    // The vision width alone: the Q-Former would read another width.
    edit_config(dir.path(), |c| {
        c["vision_config"]["hidden_size"] = (hidden * 2).into()
    });
    let err = load(dir.path()).unwrap_err();
    assert!(
        matches!(&err, Error::UnsupportedConfig { key, .. } if key == "qformer_config.encoder_hidden_size"),
        "{err}"
    );

    // Both widths, consistently: the weights have the other width.
    edit_config(dir.path(), |c| {
        c["qformer_config"]["encoder_hidden_size"] = (hidden * 2).into();
    });
    let err = load(dir.path()).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("vision_model.") && message.contains("shape mismatch"),
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

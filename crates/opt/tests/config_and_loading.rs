//! OPT configs as HF writes them, rejected values naming their key, the hub's BLIP-2 OPT key sets, loading
//! (standalone and BLIP-2 prefixes, `lm_head.weight` absent or present, any on-disk dtype) and input checks.

use blip2_nn::backend::FloatDType;
use blip2_nn::loader::{Checkpoint, KeyMap, WeightFormat, expected_keys, save_module};
use blip2_opt::{Error, LogitsFor, OptConfig, OptForCausalLm, OptInput, TokenIds};
use blip2_testkit::{Fixture, Flex, Tol, assert_tensor_close};
use burn::prelude::*;
use burn::tensor::DType;

/// The float embedding table of a model that has one.
fn table(lm: &OptForCausalLm<Flex>) -> TensorData {
    let embed_tokens = lm.model.decoder.embed_tokens.as_ref();
    embed_tokens
        .expect("a float table")
        .weight
        .val()
        .into_data()
}

fn parse(json: &str) -> Result<OptConfig, Error> {
    OptConfig::from_json_str(json, "config.json")
}

#[test]
fn reads_standalone_and_blip2_configs() {
    let standalone = OptConfig::from_file(Fixture::open("tiny-opt-lm-350m").dir()).unwrap();
    assert_eq!((standalone.embed_dim(), standalone.hidden_size), (16, 24));
    assert!(!standalone.do_layer_norm_before && !standalone.has_final_layer_norm());
    let blip2 = OptConfig::from_file(Fixture::open("tiny-opt").dir()).unwrap();
    assert_eq!(
        (blip2.vocab_size, blip2.eos_token_id.clone()),
        (331, Some(TokenIds::One(47)))
    );
    let many = parse(r#"{"model_type": "opt", "eos_token_id": [2, 50118]}"#).unwrap();
    assert_eq!(many.eos_token_id.unwrap().to_vec(), vec![2, 50118]);
    let removed = parse(r#"{"model_type": "opt", "_remove_final_layer_norm": true}"#).unwrap();
    assert!(!removed.has_final_layer_norm());
    // A BLIP-2 config's top-level `tie_word_embeddings` is not the language model's (transformers 5.24 reads
    // `text_config` alone).
    let top = parse(
        r#"{"model_type": "blip-2", "tie_word_embeddings": false, "text_config": {"model_type": "opt"}}"#,
    )
    .unwrap();
    assert!(top.tie_word_embeddings);
}

#[test]
fn unsupported_values_name_their_key() {
    for (json, key) in [
        (
            r#"{"model_type": "opt", "activation_function": "gelu_10"}"#,
            "activation_function",
        ),
        (
            r#"{"model_type": "opt", "hidden_size": 100}"#,
            "num_attention_heads",
        ),
        (
            r#"{"model_type": "opt", "layer_norm_elementwise_affine": false}"#,
            "layer_norm_elementwise_affine",
        ),
        (
            r#"{"model_type": "opt", "word_embed_proj_dim": 0}"#,
            "word_embed_proj_dim",
        ),
        (r#"{"model_type": "opt", "dropout": 2.0}"#, "dropout"),
        (r#"{"model_type": "opt", "layerdrop": 0.1}"#, "layerdrop"),
    ] {
        match parse(json) {
            Err(Error::UnsupportedConfig { key: k, .. }) => assert_eq!(k, key, "{json}"),
            other => panic!("{json}: expected an unsupported-config error, got {other:?}"),
        }
    }
    let err = parse(r#"{"model_type": "t5"}"#).unwrap_err();
    assert!(matches!(err, Error::NotAnOptConfig { .. }), "{err}");
    let err = parse(r#"{"model_type": "opt", "ffn_dim": "wide"}"#).unwrap_err();
    assert!(
        matches!(err, Error::Json { .. }) && err.to_string().contains("config.json"),
        "{err}"
    );
}

/// blip2-opt-2.7b's and -6.7b's `language_model.*` keys (fixtures/real-keys) are what the configs build, with
/// the tied `lm_head.weight` the one key that may be missing.
#[test]
fn blip2_opt_configs_expect_the_hub_keys() {
    let device = Default::default();
    for (name, config) in [
        ("blip2-opt-2.7b", OptConfig::opt_2_7b_blip2()),
        (
            "blip2-opt-6.7b",
            OptConfig {
                hidden_size: 4096,
                ffn_dim: 16384,
                ..OptConfig::opt_2_7b_blip2()
            },
        ),
    ] {
        let lm = config.init::<Flex>(&device).unwrap(); // lazy: nothing allocated
        let ours = expected_keys(&lm, &KeyMap::under("language_model"));
        // The tied `lm_head.weight` is the one key a hub file may lack.
        let theirs = blip2_testkit::real_keys(name, |k| k.starts_with("language_model."));
        assert_eq!(ours, theirs, "{name}");
    }
}

#[test]
fn loads_with_or_without_lm_head_in_any_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let device = Default::default();
    let fixture = Fixture::open("tiny-opt-lm");
    let lm =
        OptForCausalLm::<Flex>::from_pretrained(fixture.dir(), FloatDType::F32, &device).unwrap();
    let ids = || fixture.int_tensor::<Flex, 2>("input_ids/batch", &device);
    let mask = || fixture.int_tensor::<Flex, 2>("attention_mask/batch", &device);
    let want = fixture.data("logits/batch");
    std::fs::copy(
        fixture.dir().join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let file = dir.path().join("model.safetensors");

    // Saved with an explicit lm_head.weight (as some exports do): it is the head, as in transformers 5.24 (equal to
    // embed_tokens here, so the logits are the tied ones).
    let embed = table(&lm);
    save_module(
        &lm,
        &file,
        &KeyMap::new(),
        FloatDType::F32,
        &Default::default(),
    )
    .unwrap();
    let bytes = std::fs::read(&file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut all: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors.tensors();
    let head = all
        .iter()
        .find(|(k, _)| k == "model.decoder.embed_tokens.weight")
        .unwrap()
        .1
        .clone();
    all.push(("lm_head.weight".into(), head));
    std::fs::write(&file, safetensors::serialize(all, None).unwrap()).unwrap();
    let checkpoint = Checkpoint::open(&file).unwrap();
    let config = OptConfig::from_file(dir.path()).unwrap();
    let (again, report) =
        OptForCausalLm::<Flex>::load(&config, &checkpoint, FloatDType::F32, &device).unwrap();
    assert!(
        report.ignored.is_empty() && report.tied.is_empty(),
        "{report}"
    );
    assert!(report.loaded.iter().any(|k| k == "lm_head.weight"));
    assert!(again.lm_head.is_some());
    assert_eq!(table(&again), embed);
    let logits = again.forward(OptInput::Ids(ids()), Some(mask()), None, LogitsFor::All);
    assert_tensor_close("with lm_head", &logits, want, Tol::LOGITS);

    // A bf16 file loads into f32 (exactly: widening) and into bf16; the two runs hold the same weights, so they
    // differ only by bf16 arithmetic. (Not compared with an in-memory `cast_module` of the f32 model: Burn's
    // f32 -> bf16 cast on flex rounded one of tiny-opt-lm's 7920 embedding values, -0.026916511, to the farther
    // neighbour -0.026855469 where round-to-nearest-even, which the loader does, gives -0.026977539.)
    save_module(
        &lm,
        &file,
        &KeyMap::new(),
        FloatDType::BF16,
        &Default::default(),
    )
    .unwrap();
    let widened =
        OptForCausalLm::<Flex>::from_pretrained(dir.path(), FloatDType::F32, &device).unwrap();
    let want = widened
        .forward(OptInput::Ids(ids()), Some(mask()), None, LogitsFor::All)
        .into_data();
    let half =
        OptForCausalLm::<Flex>::from_pretrained(dir.path(), FloatDType::BF16, &device).unwrap();
    let logits = half.forward(OptInput::Ids(ids()), Some(mask()), None, LogitsFor::All);
    assert_eq!(logits.dtype(), DType::BF16);
    // bf16 arithmetic through two layers, the final LayerNorm and the 330-way head: transformers' own bf16 run
    // differs from its f32 run on the same bf16 weights by up to 7.2e-2 here (6 values outside `Tol::BF16`), ours
    // by 9.4e-2 (10 values). The bound is twice torch's drift.
    const BF16_OPT_LOGITS: Tol = Tol {
        name: "bf16 OPT logits, twice transformers' own bf16 drift",
        rel: 0.0,
        abs: 0.15,
    };
    assert_tensor_close("bf16 run", &logits.cast(DType::F32), &want, BF16_OPT_LOGITS);
    let stored = Checkpoint::open(&file)
        .unwrap()
        .read("model.decoder.embed_tokens.weight", FloatDType::F32)
        .unwrap();
    assert_eq!(table(&widened), stored);

    // A BLIP-2 directory without its language model: every key is named as missing.
    let vision_only = tempfile::tempdir().unwrap();
    std::fs::copy(
        Fixture::open("tiny-opt").dir().join("config.json"),
        vision_only.path().join("config.json"),
    )
    .unwrap();
    let tiny = Fixture::open("tiny-opt");
    let qformer_file = Checkpoint::open(tiny.dir()).unwrap();
    let kept: Vec<(String, Vec<u8>, Vec<usize>)> = qformer_file
        .keys()
        .filter(|k| !k.starts_with("language_model.model.decoder.layers.1."))
        .map(|k| {
            let data = qformer_file.read(k, FloatDType::F32).unwrap();
            (k.to_string(), data.as_bytes().to_vec(), data.shape.to_vec())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = kept
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    std::fs::write(
        vision_only.path().join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = OptForCausalLm::<Flex>::from_pretrained(vision_only.path(), FloatDType::F32, &device)
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("language_model.model.decoder.layers.1.fc1.weight"),
        "{text}"
    );
    assert!(
        !text.contains("vision_model"),
        "other parts are not the language model's business: {text}"
    );
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let device = Default::default();
    let lm = OptForCausalLm::<Flex>::from_pretrained(
        Fixture::open("tiny-opt-lm").dir(),
        FloatDType::F32,
        &device,
    )
    .unwrap();
    let ids = Tensor::<Flex, 2, Int>::from_ints([[2, 5, 7]], &device);
    type Case = (OptInput<Flex>, Option<Tensor<Flex, 2, Int>>, &'static str);
    let cases: Vec<Case> = vec![
        (
            OptInput::Ids(Tensor::from_ints([[2, 5, 999]], &device)),
            None,
            "token id 999",
        ),
        (
            OptInput::Embeds(Tensor::zeros([1, 3, 7], &device)),
            None,
            "7 wide",
        ),
        (
            OptInput::Ids(ids.clone()),
            Some(Tensor::ones([1, 4], &device)),
            "must cover",
        ),
        (
            OptInput::Ids(Tensor::ones([1, 41], &device)),
            None,
            "max_position_embeddings (40)",
        ),
        (OptInput::Ids(Tensor::zeros([1, 0], &device)), None, "empty"),
    ];
    for (input, mask, says) in cases {
        let err = lm.check(&input, mask.as_ref(), None).unwrap_err();
        assert!(
            matches!(err, Error::BadInput { .. }) && err.to_string().contains(says),
            "{says}: {err}"
        );
    }
}

/// `untie_head` gives the tied head a `Linear` of its own holding the embeddings (for `quantize_linears`, as
/// the int8 parity test in the blip2 crate checks): the same logits, bit for bit.
#[test]
fn untie_head_keeps_the_logits() {
    let device = Default::default();
    let fixture = Fixture::open("tiny-opt-lm");
    let lm =
        OptForCausalLm::<Flex>::from_pretrained(fixture.dir(), FloatDType::F32, &device).unwrap();
    assert!(lm.lm_head.is_none(), "tiny-opt-lm's head is tied");
    let ids = || fixture.int_tensor::<Flex, 2>("input_ids/batch", &device);
    let mask = || fixture.int_tensor::<Flex, 2>("attention_mask/batch", &device);
    let tied = lm
        .forward(OptInput::Ids(ids()), Some(mask()), None, LogitsFor::All)
        .into_data();
    let dim = lm.config.embed_dim();
    let untied = lm.untie_head();
    let head = untied.lm_head.as_ref().expect("an own head");
    assert_eq!(head.weight.dims(), [dim, 330]);
    let logits = untied.forward(OptInput::Ids(ids()), Some(mask()), None, LogitsFor::All);
    assert_tensor_close("untied head", &logits, &tied, Tol::EXACT);
    // Untying twice changes nothing.
    let again = untied.untie_head();
    assert!(again.lm_head.is_some());
}

/// A tied OPT loaded in int8 keeps no float embedding table: its lookups read the head's int8 copy (`q * scale`),
/// on flex from the int8 values in place, equal to Burn's own dequantization; and quantizing in memory
/// (`untie_head`, `quantize_linears`, `embeddings_from_head`) gives the same model.
#[test]
fn int8_head_serves_the_lookups() {
    let device = Default::default();
    let fixture = Fixture::open("tiny-opt-q8"); // a BLIP-2 directory: 336 tokens, head tied
    let group = fixture.manifest()["int8"]["group"].as_u64().unwrap() as usize;
    let config = OptConfig::from_file(fixture.dir()).unwrap();
    let checkpoint = Checkpoint::open(fixture.dir()).unwrap();
    let format = WeightFormat {
        dtype: FloatDType::F32,
        int8_group: Some(group),
    };
    let (lm, report) = OptForCausalLm::<Flex>::load(&config, &checkpoint, format, &device).unwrap();
    assert!(lm.model.decoder.embed_tokens.is_none(), "no float table");
    let head = lm.lm_head.as_ref().expect("the int8 copy").weight.val();
    assert!(matches!(head.dtype(), DType::QFloat(_)));
    assert!(
        report
            .quantized
            .iter()
            .any(|(k, _)| k == "language_model.lm_head.weight")
    );

    let ids = Tensor::<Flex, 2, Int>::from_data(
        TensorData::new(vec![0i64, 335, 17, 2, 47, 200], [2, 3]),
        &device,
    );
    let looked_up = lm.embed_tokens(ids.clone());
    let dim = config.embed_dim();
    let want = head
        .clone()
        .dequantize()
        .select(1, ids.clone().reshape([6]))
        .transpose()
        .reshape([2, 3, dim]);
    assert_tensor_close("lookups", &looked_up, &want.to_data(), Tol::EXACT);
    // They are the int8 values, not the file's: within one int8 step of the table.
    let table = checkpoint
        .read(
            "language_model.model.decoder.embed_tokens.weight",
            FloatDType::F32,
        )
        .unwrap();
    let table = Tensor::<Flex, 2>::from_data(table, &device).select(0, ids.reshape([6]));
    let step = table.clone().abs().max().into_scalar() / 127.0;
    let err = (looked_up.reshape([6, dim]) - table)
        .abs()
        .max()
        .into_scalar();
    assert!(
        err > 0.0 && err <= step / 2.0 + 1e-6,
        "{err} against {step}"
    );

    let (float, _) =
        OptForCausalLm::<Flex>::load(&config, &checkpoint, FloatDType::F32, &device).unwrap();
    let in_memory = blip2_nn::quantize_linears(float.untie_head(), group)
        .0
        .embeddings_from_head();
    assert!(in_memory.model.decoder.embed_tokens.is_none());
    let ids =
        Tensor::<Flex, 2, Int>::from_data(TensorData::new(vec![2i64, 9, 300], [1, 3]), &device);
    let a = lm.forward(OptInput::Ids(ids.clone()), None, None, LogitsFor::All);
    let b = in_memory.forward(OptInput::Ids(ids), None, None, LogitsFor::All);
    assert_tensor_close("in memory", &b, &a.to_data(), Tol::EXACT);
}

//! Tokenizer and processor set-up from the config files as transformers 5.24 does it (tokens it adds and the
//! ids they get, the legacy `special_tokens_map.json`, `num_query_tokens`), the prompt templates, and the typed
//! errors for bad files, bad values and bad input.

use std::path::{Path, PathBuf};

use blip2_processor::{
    Blip2Processor, Blip2Tokenizer, EncodeOptions, Error, Padding, TokenizerConfig,
    clean_up_tokenization, num_query_tokens_from_model_dir, vqa_prompt, vqa_prompt_with_context,
};
use blip2_testkit::{Fixture, fixtures_root};
use serde_json::Value;

/// A fresh directory under the system temp dir (removed at the start, left for inspection after).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "blip2-processor-text-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of a fixture's processor files (no weights) in a fresh directory.
fn copy_fixture(fixture: &str, name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let src = fixtures_root().join(fixture);
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "processor_config.json",
        "preprocessor_config.json",
    ] {
        if src.join(file).is_file() {
            std::fs::copy(src.join(file), dir.join(file)).unwrap();
        }
    }
    dir
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn write_json(path: &Path, value: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// Edits `tokenizer_config.json` of `dir`.
fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = dir.join("tokenizer_config.json");
    let mut value = read_json(&path);
    edit(value.as_object_mut().unwrap());
    write_json(&path, &value);
}

/// Drops an added token from `tokenizer.json` of `dir`.
fn drop_added_token(dir: &Path, content: &str) {
    let path = dir.join("tokenizer.json");
    let mut value = read_json(&path);
    value["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| t["content"] != content);
    write_json(&path, &value);
}

fn batch_prompts(fixture: &str) -> Vec<String> {
    Fixture::open(fixture).manifest()["prompts"]["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_missing_image_token_is_added_at_the_end_as_a_special_token() {
    // The generator built its tokenizers without `<image>` and let `Blip2Processor` add it, so the fixture's
    // `image_token_index` is the id the addition gives.
    let fixture = Fixture::open("tiny-opt");
    let want = fixture.manifest()["image_token_index"].as_u64().unwrap() as u32;
    let dir = copy_fixture("tiny-opt", "no-image-token");
    drop_added_token(&dir, "<image>");
    let processor = Blip2Processor::from_model_dir(&dir).unwrap();
    assert_eq!(processor.image_token_id(), want);
    assert_eq!(processor.tokenizer().len(), want as usize + 1);
    assert_eq!(
        processor.tokenizer().id_to_token(want).as_deref(),
        Some("<image>")
    );
    // Special: tokenized whole inside text, dropped by skip_special_tokens.
    let ids = processor.tokenizer().encode("<image>", false).unwrap();
    assert_eq!(ids, vec![want]);
    assert_eq!(
        processor
            .decode(&[i64::from(want), i64::from(want)], true)
            .unwrap(),
        ""
    );
    let enc = processor
        .encode_prompts(&batch_prompts("tiny-opt"), &EncodeOptions::default())
        .unwrap();
    assert_eq!(enc.input_ids, fixture.id_rows("input_ids/batch"));
}

#[test]
fn special_tokens_the_vocabulary_lacks_are_added_in_transformers_order() {
    // T5 has no BOS; naming one that is not in the vocabulary adds it (then the extra special tokens), before
    // the processor adds `<image>`.
    let dir = copy_fixture("tiny-t5", "new-bos");
    drop_added_token(&dir, "<image>");
    let base = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    let first_new = base.image_token_id();
    edit_config(&dir, |c| {
        c.insert("bos_token".into(), "<s>".into());
        c.insert(
            "extra_special_tokens".into(),
            serde_json::json!(["<x1>", {"content": "<x2>", "special": true}]),
        );
    });
    let tokenizer = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    let special = tokenizer.special_tokens();
    assert_eq!(special.bos.as_ref().unwrap().id, first_new);
    assert_eq!(tokenizer.token_to_id("<x1>"), Some(first_new + 1));
    assert_eq!(tokenizer.token_to_id("<x2>"), Some(first_new + 2));
    assert_eq!(tokenizer.image_token_id(), first_new + 3);
    assert_eq!(tokenizer.len(), first_new as usize + 4);
    // Added tokens are special: decoding skips them.
    let ids: Vec<i64> = (first_new..first_new + 4).map(i64::from).collect();
    assert_eq!(tokenizer.decode(&ids, true).unwrap(), "");
}

#[test]
fn special_tokens_map_overrides_the_config_without_added_tokens_decoder() {
    let dir = copy_fixture("tiny-opt", "legacy-map");
    write_json(
        &dir.join("special_tokens_map.json"),
        &serde_json::json!({
            "pad_token": "<unk>",
            "bos_token": {"content": "<s>", "lstrip": false, "normalized": false, "rstrip": false,
                          "single_word": false},
        }),
    );
    let tokenizer = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    let special = tokenizer.special_tokens();
    assert_eq!(special.pad.as_ref().unwrap().content, "<unk>");
    assert_eq!(
        special.pad.as_ref().unwrap().id,
        special.unk.as_ref().unwrap().id
    );
    assert_eq!(special.bos.as_ref().unwrap().content, "<s>");
    assert_eq!(
        special.bos.as_ref().unwrap().id,
        tokenizer.token_to_id("<s>").unwrap()
    );
    // The post-processor still adds tokenizer.json's `</s>`: the BOS attribute does not change encoding.
    let eos = special.eos.as_ref().unwrap().id;
    assert_eq!(tokenizer.encode("", true).unwrap(), vec![eos]);

    // With `added_tokens_decoder` in the config, special_tokens_map.json is not read.
    edit_config(&dir, |c| {
        c.insert("added_tokens_decoder".into(), serde_json::json!({}));
    });
    let tokenizer = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    assert_eq!(
        tokenizer.special_tokens().pad.as_ref().unwrap().content,
        "<pad>"
    );
}

#[test]
fn add_bos_and_eos_flags_are_ignored_with_a_tokenizer_json() {
    // transformers 5.24 drops both keys when tokenizer.json exists; the post-processor stays.
    let dir = copy_fixture("tiny-t5", "add-eos");
    let before = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    edit_config(&dir, |c| {
        c.insert("add_eos_token".into(), false.into());
        c.insert("add_bos_token".into(), true.into());
    });
    let after = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    for text in batch_prompts("tiny-t5") {
        assert_eq!(
            after.encode(&text, true).unwrap(),
            before.encode(&text, true).unwrap()
        );
    }
}

#[test]
fn a_configured_image_token_is_used() {
    // transformers reads `image_token` into `tokenizer.image_token` (and its Blip2Processor then fails on
    // the plain string); blip2 uses the token.
    let dir = copy_fixture("tiny-opt", "image-token");
    let len = Blip2Tokenizer::from_model_dir(&dir).unwrap().len();
    edit_config(&dir, |c| {
        c.insert("image_token".into(), "<img>".into());
    });
    let processor = Blip2Processor::from_model_dir(&dir).unwrap();
    let image = &processor.tokenizer().special_tokens().image;
    assert_eq!(image.content, "<img>");
    assert_eq!(image.id as usize, len);
    let caption = processor.caption_inputs(1).unwrap();
    let n = processor.num_query_tokens();
    assert!(
        caption.input_ids[0][..n]
            .iter()
            .all(|&t| t == i64::from(image.id))
    );
}

#[test]
fn clean_up_applies_to_unigram_and_not_to_bpe() {
    assert_eq!(
        clean_up_tokenization("a , b . c ? d ! it 's I 'm we 're they 've do n't ' x"),
        "a, b. c? d! it's I'm we're they've don't'x"
    );
    let text = "Question: where is it ? Answer: here .";
    for (fixture, cleaned) in [("tiny-t5", true), ("tiny-opt", false)] {
        let dir = copy_fixture(fixture, &format!("cleanup-{fixture}"));
        let plain = Blip2Tokenizer::from_model_dir(&dir).unwrap();
        let ids: Vec<i64> = plain
            .encode(text, false)
            .unwrap()
            .into_iter()
            .map(i64::from)
            .collect();
        let raw = plain.decode(&ids, true).unwrap();
        edit_config(&dir, |c| {
            c.insert("clean_up_tokenization_spaces".into(), true.into());
        });
        let tokenizer = Blip2Tokenizer::from_model_dir(&dir).unwrap();
        let want = if cleaned {
            clean_up_tokenization(&raw)
        } else {
            raw.clone()
        };
        assert_eq!(tokenizer.decode(&ids, true).unwrap(), want, "{fixture}");
        assert_eq!(
            cleaned,
            want != raw,
            "{fixture}: the text has spaces to clean"
        );
    }
}

#[test]
fn num_query_tokens_comes_from_processor_config_then_config_json() {
    for name in ["tiny-opt", "tiny-t5", "tiny-itm"] {
        let fixture = Fixture::open(name);
        let want = fixture.manifest()["checkpoint_keys"]["query_tokens"][1]
            .as_u64()
            .unwrap() as usize;
        assert_eq!(
            num_query_tokens_from_model_dir(fixture.dir()).unwrap(),
            want
        );
    }
    let dir = copy_fixture("tiny-opt", "nq-config-json");
    std::fs::remove_file(dir.join("processor_config.json")).unwrap();
    let err = num_query_tokens_from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::NoNumQueryTokens { dir: d } if d == &dir),
        "{err}"
    );
    assert!(Blip2Processor::from_model_dir(&dir).is_err());
    write_json(
        &dir.join("config.json"),
        &serde_json::json!({"num_query_tokens": 7}),
    );
    assert_eq!(num_query_tokens_from_model_dir(&dir).unwrap(), 7);
    write_json(
        &dir.join("processor_config.json"),
        &serde_json::json!({"num_query_tokens": "32"}),
    );
    let err = num_query_tokens_from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BadTextConfigValue { name, key, value, .. }
            if name.ends_with("processor_config.json") && key == "num_query_tokens" && value == "\"32\""),
        "{err}"
    );
}

#[test]
fn vqa_templates_follow_blip2_and_lavis() {
    assert_eq!(
        vqa_prompt("which city is this?"),
        "Question: which city is this? Answer:"
    );
    let context = [
        ("which city is this?", "singapore"),
        ("why?", "it has a statue of a merlion"),
    ];
    assert_eq!(
        vqa_prompt_with_context(&context, "where is the name merlion coming from?"),
        "Question: which city is this? Answer: singapore. Question: why? Answer: it has a statue of a \
         merlion. Question: where is the name merlion coming from? Answer:"
    );
    let none: [(&str, &str); 0] = [];
    assert_eq!(vqa_prompt_with_context(&none, "why?"), vqa_prompt("why?"));
}

// ------------------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------------------

#[test]
fn missing_and_corrupt_tokenizer_files() {
    let empty = temp_dir("no-tokenizer");
    let err = Blip2Tokenizer::from_model_dir(&empty).unwrap_err();
    assert!(
        matches!(&err, Error::NoTokenizer { dir } if dir == &empty),
        "{err}"
    );
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    let dir = copy_fixture("tiny-opt", "corrupt");
    let path = dir.join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let err = Blip2Tokenizer::from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BadTokenizer { name, .. } if name.ends_with("tokenizer.json")),
        "{err}"
    );
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    let err = Blip2Tokenizer::from_json_str("{}", TokenizerConfig::default()).unwrap_err();
    assert!(
        matches!(&err, Error::BadTokenizer { name, .. } if name == "<memory>"),
        "{err}"
    );
}

#[test]
fn bad_tokenizer_configs_name_the_file_key_and_value() {
    let dir = copy_fixture("tiny-opt", "bad-config");
    let config = dir.join("tokenizer_config.json");
    std::fs::write(&config, "{").unwrap();
    let err = Blip2Tokenizer::from_model_dir(&dir).unwrap_err();
    assert!(
        matches!(&err, Error::BadTextConfig { name, .. } if name.ends_with("tokenizer_config.json")),
        "{err}"
    );
    std::fs::write(&config, "[1, 2]").unwrap();
    assert!(matches!(
        Blip2Tokenizer::from_model_dir(&dir),
        Err(Error::BadTextConfig { .. })
    ));

    let cases: [(&str, Value); 6] = [
        ("padding_side", "middle".into()),
        ("truncation_side", 1.into()),
        ("model_max_length", (-5).into()),
        ("pad_token", 5.into()),
        ("clean_up_tokenization_spaces", "yes".into()),
        ("extra_special_tokens", "<x>".into()),
    ];
    for (key, value) in cases {
        let json = serde_json::json!({ key: value.clone() }).to_string();
        let err = TokenizerConfig::from_json_str(&json).unwrap_err();
        match &err {
            Error::BadTextConfigValue {
                name,
                key: k,
                value: v,
                ..
            } => {
                assert_eq!(name, "<memory>");
                assert_eq!(k, key);
                assert_eq!(v, &value.to_string());
            }
            other => panic!("{key}: {other}"),
        }
        assert!(err.to_string().contains(key), "{err}");
    }
    let err =
        TokenizerConfig::from_json_str(r#"{"added_tokens_decoder": {"x": {"content": "<a>"}}}"#)
            .unwrap_err();
    assert!(
        matches!(&err, Error::BadTextConfigValue { key, .. } if key == "added_tokens_decoder.x"),
        "{err}"
    );
    let err = TokenizerConfig::from_json_str(r#"{"bos_token": {"lstrip": true}}"#).unwrap_err();
    assert!(err.to_string().contains("content"), "{err}");

    // HF's "no limit" sentinel and nulls.
    let config = TokenizerConfig::from_json_str(
        r#"{"model_max_length": 1000000000000000019884624838656, "pad_token": null}"#,
    )
    .unwrap();
    assert_eq!(config.model_max_length, None);
    assert_eq!(config.token("pad_token"), None);
}

#[test]
fn special_token_lookups() {
    let t5 = Blip2Tokenizer::from_model_dir(fixtures_root().join("tiny-t5")).unwrap();
    let err = t5.special_token_id("foo_token").unwrap_err();
    assert!(
        matches!(&err, Error::UnknownSpecialToken { key, .. } if key == "foo_token"),
        "{err}"
    );
    let err = t5.special_token_id("bos_token").unwrap_err();
    assert!(
        matches!(&err, Error::MissingSpecialToken { key, .. } if key == "bos_token"),
        "{err}"
    );
    assert_eq!(
        t5.special_token_id("eos_token").unwrap(),
        t5.special_tokens().eos.as_ref().unwrap().id
    );
}

#[test]
fn padding_without_a_pad_token_fails_only_when_a_row_needs_it() {
    let dir = copy_fixture("tiny-t5", "no-pad");
    edit_config(&dir, |c| {
        c.remove("pad_token");
    });
    let processor = Blip2Processor::from_model_dir(&dir).unwrap();
    let prompts = batch_prompts("tiny-t5");
    assert!(processor.tokenizer().special_tokens().pad.is_none());
    processor
        .encode_prompt(&prompts[0], &EncodeOptions::default())
        .unwrap();
    let err = processor
        .encode_prompts(&prompts, &EncodeOptions::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::MissingSpecialToken { key, name, .. }
            if key == "pad_token" && name.ends_with("tokenizer.json")),
        "{err}"
    );
    let ragged = processor
        .encode_prompts(
            &prompts,
            &EncodeOptions::default().with_padding(Padding::DoNotPad),
        )
        .unwrap();
    assert!(matches!(
        ragged.seq_len(),
        Err(Error::RaggedBatch { index: 1, .. })
    ));
    assert!(matches!(
        ragged.input_ids_tensor::<blip2_testkit::Flex>(&Default::default()),
        Err(Error::RaggedBatch { .. })
    ));
}

#[test]
fn prompt_list_and_length_errors() {
    let processor = Blip2Processor::from_model_dir(fixtures_root().join("tiny-opt")).unwrap();
    let n = processor.num_query_tokens();
    let none: [&str; 0] = [];
    assert!(matches!(
        processor.encode_prompts(&none, &EncodeOptions::default()),
        Err(Error::EmptyPrompts)
    ));
    assert!(matches!(
        processor
            .tokenizer()
            .encode_batch(&none, &EncodeOptions::default()),
        Err(Error::EmptyPrompts)
    ));
    assert!(matches!(
        processor.caption_inputs(0),
        Err(Error::EmptyBatch)
    ));

    // Too long without truncation: the error counts the `<image>` tokens.
    let prompts = batch_prompts("tiny-opt");
    let full = processor
        .encode_prompts(
            &prompts,
            &EncodeOptions::default().with_padding(Padding::DoNotPad),
        )
        .unwrap();
    let limit = full.input_ids[1].len() - 1;
    assert!(full.input_ids[0].len() <= limit);
    let err = processor
        .encode_prompts(&prompts, &EncodeOptions::default().with_max_length(limit))
        .unwrap_err();
    match err {
        Error::PromptTooLong {
            index,
            length,
            limit: l,
        } => {
            assert_eq!((index, length, l), (1, full.input_ids[1].len(), limit));
        }
        other => panic!("{other}"),
    }
    // With truncation it fits.
    let cut = processor
        .encode_prompts(
            &prompts,
            &EncodeOptions::default()
                .with_max_length(limit)
                .with_truncation(true),
        )
        .unwrap();
    assert_eq!(cut.seq_len().unwrap(), limit);

    // `max_length` below the `<image>` tokens, or with no room for OPT's BOS.
    let err = processor
        .encode_prompts(&prompts, &EncodeOptions::default().with_max_length(n - 1))
        .unwrap_err();
    assert!(
        matches!(err, Error::MaxLengthTooSmall { max_length, needed } if max_length == n - 1 && needed == n),
        "{err}"
    );
    let err = processor
        .encode_prompts(
            &prompts,
            &EncodeOptions::default()
                .with_max_length(n)
                .with_truncation(true),
        )
        .unwrap_err();
    assert!(
        matches!(err, Error::MaxLengthTooSmall { max_length, needed } if max_length == n && needed == n + 1),
        "{err}"
    );

    // Padding to max_length with no length anywhere.
    let dir = copy_fixture("tiny-opt", "no-max-length");
    edit_config(&dir, |c| {
        c.remove("model_max_length");
    });
    let tokenizer = Blip2Tokenizer::from_model_dir(&dir).unwrap();
    let err = tokenizer
        .encode_batch(
            &prompts,
            &EncodeOptions::default().with_padding(Padding::MaxLength),
        )
        .unwrap_err();
    assert!(matches!(err, Error::NoMaxLength { .. }), "{err}");
    // Truncation with no length anywhere truncates nothing (transformers warns and does the same).
    let enc = tokenizer
        .encode_batch(&prompts, &EncodeOptions::default().with_truncation(true))
        .unwrap();
    assert_eq!(enc.input_ids.len(), 2);
}

#[test]
fn model_max_length_is_the_default_limit() {
    // tiny-opt's config says 64: `padding=max_length` pads the text to it, then the `<image>` tokens come.
    let processor = Blip2Processor::from_model_dir(fixtures_root().join("tiny-opt")).unwrap();
    let model_max = processor.tokenizer().config().model_max_length.unwrap();
    let enc = processor
        .encode_prompts(
            &batch_prompts("tiny-opt"),
            &EncodeOptions::default().with_padding(Padding::MaxLength),
        )
        .unwrap();
    assert_eq!(
        enc.seq_len().unwrap(),
        model_max + processor.num_query_tokens()
    );
}

#[test]
fn invalid_ids_do_not_decode() {
    let tokenizer = Blip2Tokenizer::from_model_dir(fixtures_root().join("tiny-opt")).unwrap();
    let err = tokenizer.decode(&[5, -100], true).unwrap_err();
    assert!(
        matches!(err, Error::InvalidTokenId { id: -100, index: 1 }),
        "{err}"
    );
    let err = tokenizer
        .decode(&[i64::from(u32::MAX) + 1], true)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidTokenId { .. }), "{err}");
    // Ids past the vocabulary are dropped, as the `tokenizers` crate (and so transformers) drops them.
    let past = tokenizer.len() as i64;
    assert_eq!(
        tokenizer.decode(&[past, 68], false).unwrap(),
        tokenizer.decode(&[68], false).unwrap()
    );
}

#[test]
fn tokenizers_can_be_built_in_memory() {
    let json = std::fs::read_to_string(fixtures_root().join("tiny-t5/tokenizer.json")).unwrap();
    let from_dir = Blip2Tokenizer::from_model_dir(fixtures_root().join("tiny-t5")).unwrap();
    let config = TokenizerConfig::default()
        .with_token("eos_token", "</s>")
        .with_token("pad_token", "<pad>");
    let tokenizer = Blip2Tokenizer::from_json_str(&json, config).unwrap();
    assert_eq!(tokenizer.name(), "<memory>");
    assert_eq!(
        tokenizer.special_tokens().pad,
        from_dir.special_tokens().pad
    );
    assert_eq!(tokenizer.image_token_id(), from_dir.image_token_id());
    let prompts = batch_prompts("tiny-t5");
    assert_eq!(
        tokenizer
            .encode_batch(&prompts, &EncodeOptions::default())
            .unwrap(),
        from_dir
            .encode_batch(&prompts, &EncodeOptions::default())
            .unwrap()
    );
    // The older key name for extra special tokens is read, and named in errors.
    let config =
        TokenizerConfig::from_json_str(r#"{"additional_special_tokens": ["<y>"]}"#).unwrap();
    let tokenizer = Blip2Tokenizer::from_json_str(&json, config).unwrap();
    assert_eq!(
        tokenizer.token_to_id("<y>"),
        Some(from_dir.image_token_id() + 1)
    );
    let err = TokenizerConfig::from_json_str(r#"{"additional_special_tokens": 3}"#).unwrap_err();
    assert!(
        matches!(&err, Error::BadTextConfigValue { key, value, .. }
            if key == "additional_special_tokens" && value == "3"),
        "{err}"
    );
}

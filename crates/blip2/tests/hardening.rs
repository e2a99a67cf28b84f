//! Inputs a user can get wrong, through the public API, on the tiny fixtures: each is refused with a typed error
//! that names the value and the limit (none panics, none runs out of memory, none fails after the work is
//! done), and a chat on a short-context model keeps going by forgetting its oldest turns.

use std::path::Path;

use blip2::generation::Error as G;
use blip2::processor::{Blip2Processor, Error as P, Limits};
use blip2::{Blip2, Blip2Retrieval, Error};
use blip2_generation::GenerationConfig;
use blip2_nn::backend::FloatDType;
use blip2_testkit::{Flex, fixtures_root};
use image::RgbImage;

type B = Flex;

fn load(name: &str) -> Blip2<B> {
    Blip2::<B>::from_pretrained(
        fixtures_root().join(name),
        FloatDType::F32,
        &Default::default(),
    )
    .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn with_max_new_tokens(blip2: &mut Blip2<B>, n: usize) {
    let config = GenerationConfig {
        max_new_tokens: Some(n),
        ..blip2.generation_config().clone()
    };
    blip2.set_generation_config(config).unwrap();
}

fn picture() -> RgbImage {
    RgbImage::from_fn(37, 29, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, 90])
    })
}

fn words(n: usize) -> String {
    vec!["word"; n].join(" ")
}

/// `select` of a row past the batch is an error naming the row and the batch size (it panicked).
#[test]
fn select_past_the_batch_names_the_row_and_the_batch() {
    let blip2 = load("tiny-opt");
    let features = blip2.encode_images(&[picture()]).unwrap();
    let err = features.select(&[5]).unwrap_err();
    assert!(
        matches!(err, Error::NoSuchRow { row: 5, batch: 1 }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("image 5") && message.contains("1 images"),
        "{message}"
    );
    assert_eq!(features.select(&[0, 0]).unwrap().batch_size(), 2);
}

/// A 0x0 image, an empty caption prompt, an empty question in a batch and a prompt holding `<image>` are
/// refused (they were accepted: a black picture, a caption of nothing, a confusing count of image tokens).
#[test]
fn empty_inputs_and_image_tokens_are_refused() {
    let blip2 = load("tiny-opt");
    let err = blip2
        .encode_images(&[picture(), RgbImage::new(0, 0)])
        .unwrap_err();
    assert!(
        matches!(&err, Error::Processor(P::ZeroSize { name, .. }) if name.contains("image 1")),
        "{err:?}"
    );

    let features = blip2.encode_images(&[picture(), picture()]).unwrap();
    let err = blip2.caption(&features, Some(" ")).unwrap_err();
    assert!(matches!(err, Error::EmptyText { .. }), "{err:?}");
    assert!(err.to_string().contains("None"), "{err}");

    let err = blip2.ask(&features, &["what is it?", ""]).unwrap_err();
    assert!(
        matches!(&err, Error::EmptyText { what, .. } if what == "question 1"),
        "{err:?}"
    );

    let err = blip2
        .ask(&features, &["what is it?", "is <image> a cat?"])
        .unwrap_err();
    assert!(
        matches!(&err, Error::ImageTokenInPrompt { index: 1, token } if token == "<image>"),
        "{err:?}"
    );
}

/// OPT: a prompt over the position table, and a max_new_tokens the table cannot hold after the prompt, are
/// refused before generating, naming max_new_tokens and the positions (the second failed only after
/// generating up to the end of the table, with the model's error).
#[test]
fn opt_prompt_and_new_tokens_are_checked_against_the_positions() {
    let mut blip2 = load("tiny-opt");
    let features = blip2.encode_images(&[picture()]).unwrap();
    let err = blip2.generate(&features, &[words(200)]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Generation(G::PromptTooLong {
                max_positions: 64,
                ..
            })
        ),
        "{err:?}"
    );
    with_max_new_tokens(&mut blip2, 100);
    let err = blip2.caption(&features, None).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Generation(G::TooManyNewTokens {
                max_new_tokens: 100,
                max_positions: 64,
                ..
            })
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("max_new_tokens 100"), "{err}");
}

/// T5: the tokenizer's model_max_length (64 in the fixture) bounds the prompt's text, as transformers warns;
/// T5 has no position table, so a 10,000-word prompt ran out of memory instead.
#[test]
fn t5_prompts_are_held_to_model_max_length() {
    let blip2 = load("tiny-t5");
    let features = blip2.encode_images(&[picture()]).unwrap();
    let err = blip2.ask(&features, &[words(100)]).unwrap_err();
    match &err {
        Error::TooLong {
            what: "prompt",
            index: 0,
            length,
            limit: 64,
            key: "model_max_length",
            file,
            ..
        } => {
            assert!(*length > 64);
            assert!(file.ends_with("tokenizer_config.json"), "{file}");
        }
        other => panic!("{other:?}"),
    }
    assert!(blip2.ask(&features, &["what is it?"]).is_ok());
}

/// A chat on a model with 64 positions goes on past the turns that fit, forgetting the oldest ones (it failed
/// on every question after the first few).
#[test]
fn chat_forgets_the_oldest_turns_to_fit() {
    let mut blip2 = load("tiny-opt");
    with_max_new_tokens(&mut blip2, 4);
    let features = blip2.encode_images(&[picture()]).unwrap();
    let mut chat = blip2.chat(features).unwrap();
    let mut forgot = 0;
    for turn in 0..6 {
        chat.ask("what colour is the thing?")
            .unwrap_or_else(|e| panic!("turn {turn}: {e}"));
        forgot += chat.forgotten();
    }
    assert!(forgot > 0, "nothing was forgotten in 6 turns");
    assert!(chat.history().len() < 6);
    // A question that does not fit even alone is still an error, and the history stays.
    let before = chat.history().to_vec();
    let err = chat.ask(&words(200)).unwrap_err();
    assert!(
        matches!(err, Error::Generation(G::PromptTooLong { .. })),
        "{err:?}"
    );
    assert_eq!(chat.history(), &before[..]);
}

/// A processor that disagrees with the model (query count, `<image>` id outside the vocabulary) is a model
/// error naming the file and the key, not a bad prompt.
#[test]
fn a_processor_that_does_not_fit_the_model_names_the_file_and_key() {
    let blip2 = load("tiny-opt");
    let p = blip2.processor();
    let more = Blip2Processor::new(
        p.image_processor().clone(),
        p.tokenizer().clone(),
        p.num_query_tokens() + 1,
    );
    let err = Blip2::new(blip2.model().clone(), more, &Default::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Mismatch { key: "num_query_tokens", file, .. } if file.contains("processor_config.json")),
        "{err:?}"
    );

    let mut model = blip2.model().clone();
    model.config.image_token_index = Some(100_000);
    let err = Blip2::new(model, p.clone(), &Default::default()).unwrap_err();
    assert!(
        matches!(&err, Error::Mismatch { key: "image_token_index", file, .. } if file == "config.json"),
        "{err:?}"
    );
    assert!(err.to_string().contains("vocabulary"), "{err}");
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A processor config resizing every image to 20000x20000 is refused as a config problem naming the file,
/// the key and the limit (it was an image error pointing at a Rust type); raised limits accept it.
#[test]
fn a_resize_size_over_the_limits_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures_root().join("tiny-opt"), dir.path());
    for file in ["preprocessor_config.json", "processor_config.json"] {
        let path = dir.path().join(file);
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let size = serde_json::json!({"height": 20000, "width": 20000});
        if let Some(nested) = json.get_mut("image_processor") {
            nested["size"] = size;
        } else if file == "preprocessor_config.json" {
            json["size"] = size;
        }
        std::fs::write(&path, json.to_string()).unwrap();
    }
    let err =
        Blip2::<B>::from_pretrained(dir.path(), FloatDType::F32, &Default::default()).unwrap_err();
    match &err {
        Error::Processor(P::UnsupportedConfig { name, key, .. }) => {
            assert_eq!(key, "size");
            assert!(name.ends_with("_config.json"), "{name}");
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("89478485"), "{err}");
    let limits = Limits {
        max_pixels: 400_000_000,
        max_resize_pixels: 400_000_000,
        ..Limits::default()
    };
    Blip2::<B>::from_pretrained_with_limits(
        dir.path(),
        FloatDType::F32,
        &Default::default(),
        limits,
    )
    .unwrap();
}

/// A retrieval text over the Q-Former's positions is an input error naming the text and both lengths.
#[test]
fn an_over_long_retrieval_text_is_named() {
    let r = Blip2Retrieval::<B>::from_pretrained(
        fixtures_root().join("tiny-itm"),
        FloatDType::F32,
        &Default::default(),
    )
    .unwrap();
    let err = r
        .encode_texts(&["a cat".to_string(), words(50)])
        .unwrap_err();
    match &err {
        Error::TooLong {
            what: "text",
            index: 1,
            limit: 24,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("word word"), "{err}");
    let err = r.encode_images(&[RgbImage::new(0, 3)]).unwrap_err();
    assert!(
        matches!(err, Error::Processor(P::ZeroSize { .. })),
        "{err:?}"
    );
}

/// Text features of a text over the language model's length are refused by name (T5's model_max_length, OPT's
/// positions) before the model runs.
#[test]
fn over_long_text_features_are_named() {
    for (name, key, limit) in [
        ("tiny-t5", "model_max_length", 64),
        ("tiny-opt", "text_config.max_position_embeddings", 64),
    ] {
        let blip2 = load(name);
        let err = blip2.text_features(&["a cat", &words(200)]).unwrap_err();
        match &err {
            Error::TooLong {
                what: "text",
                index: 1,
                key: k,
                limit: l,
                ..
            } => assert_eq!((*k, *l), (key, limit), "{name}"),
            other => panic!("{name}: {other:?}"),
        }
        assert!(blip2.text_features(&["a cat"]).is_ok(), "{name}");
    }
}

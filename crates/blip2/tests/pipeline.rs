//! End to end, as a user calls it: image files and prompt strings in, `Blip2` (processor, model, generation)
//! in the middle, ids and text out, equal to transformers' `Blip2Processor` + `generate()` + `batch_decode` on
//! the fixtures, for OPT and Flan-T5, greedy and beam search, with a prompt, a VQA question, a padded batch and
//! no prompt; plus the chat loop and the errors a user can cause.

use std::path::PathBuf;

use blip2::{Blip2, Error, Generated, ImageFeatures};
use blip2_generation::GenerationConfig;
use blip2_nn::backend::FloatDType;
use blip2_testkit::{Fixture, Flex, assert_ids_eq};

type B = Flex;

fn setup(name: &str, beams: usize) -> (Fixture, Blip2<B>, Vec<PathBuf>) {
    let fixture = Fixture::open(name);
    let mut blip2 =
        Blip2::<B>::from_pretrained(fixture.dir(), FloatDType::F32, &Default::default())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = GenerationConfig {
        max_new_tokens: Some(
            fixture.manifest()["generation"]["max_new_tokens"]
                .as_u64()
                .unwrap() as usize,
        ),
        num_beams: beams,
        ..blip2.generation_config().clone()
    };
    blip2.set_generation_config(config).unwrap();
    let images = fixture.batch_images();
    (fixture, blip2, images)
}

/// The fixture's images encoded as a user encodes them: read from their files, JPEGs included (libjpeg-turbo
/// decodes them as Pillow does). Without the `libjpeg-turbo` feature a JPEG's pixels are PIL's
/// (`processor/rgb/*`) instead: the pure-Rust decoder is a few levels off (docs/numerics.md), which moves a
/// random tiny model's ids.
fn encoded(fixture: &Fixture, blip2: &Blip2<B>, files: &[PathBuf]) -> ImageFeatures<B> {
    if cfg!(feature = "libjpeg-turbo") {
        return blip2.encode_image_files(files).unwrap();
    }
    let images: Vec<image::RgbImage> = files
        .iter()
        .map(|file| {
            if file.extension().is_some_and(|e| e == "jpg") {
                let stem = file.file_stem().unwrap().to_str().unwrap();
                let data = fixture.data(&format!("processor/rgb/{stem}"));
                let (h, w) = (data.shape[0] as u32, data.shape[1] as u32);
                let bytes: Vec<u8> = data.clone().to_vec().unwrap();
                blip2
                    .processor()
                    .image_processor()
                    .from_raw_rgb(w, h, &bytes)
                    .unwrap()
            } else {
                blip2.open_images(&[file]).unwrap().remove(0)
            }
        })
        .collect();
    blip2.encode_images(&images).unwrap()
}

fn sequences(out: &[Generated]) -> Vec<Vec<i64>> {
    out.iter()
        .map(|g| g.sequence.iter().map(|&t| i64::from(t)).collect())
        .collect()
}

fn prompts(fixture: &Fixture) -> (String, Vec<String>) {
    let p = &fixture.manifest()["prompts"];
    let batch = p["batch"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    (p["single"].as_str().unwrap().to_string(), batch)
}

fn end_to_end(name: &str) {
    let (single, batch) = prompts(&Fixture::open(name));
    for (beams, kind) in [(1, "greedy"), (3, "beam3")] {
        let (fixture, blip2, files) = setup(name, beams);
        let images = encoded(&fixture, &blip2, &files);
        let out = blip2.generate(&images, &batch).unwrap();
        assert_ids_eq(
            &format!("{name} {kind} batch"),
            &sequences(&out),
            &fixture.id_rows(&format!("gen/{kind}/batch")),
        );
        let first = images.select(&[0]).unwrap();
        let out = blip2.generate(&first, &[single.as_str()]).unwrap();
        assert_ids_eq(
            &format!("{name} {kind} single"),
            &sequences(&out),
            &fixture.id_rows(&format!("gen/{kind}/single")),
        );
        if beams == 1 {
            // transformers decodes the whole row; the pipeline's text is the new part of it.
            let batch_out = blip2.generate(&images, &batch).unwrap();
            let rows: Vec<Vec<i64>> = sequences(&batch_out);
            let decoded = blip2.processor().batch_decode(&rows, true).unwrap();
            let want: Vec<String> = fixture.manifest()["generation"]["decoded_greedy_batch"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            assert_eq!(decoded, want, "{name}");
            for g in &batch_out {
                let ids: Vec<i64> = g.token_ids.iter().map(|&t| i64::from(t)).collect();
                assert_eq!(g.text, blip2.processor().decode(&ids, true).unwrap().trim());
            }
            // Captioning without a prompt.
            let out = blip2.caption(&first, None).unwrap();
            assert_ids_eq(
                &format!("{name} caption without a prompt"),
                &sequences(&out),
                &fixture.id_rows("gen/greedy/noprompt"),
            );
        } else {
            assert!(out[0].score.is_some());
        }
    }
}

#[test]
fn opt_end_to_end() {
    end_to_end("tiny-opt");
}

#[test]
fn t5_end_to_end() {
    end_to_end("tiny-t5");
}

#[test]
fn ask_uses_the_vqa_template_and_chat_keeps_the_history() {
    let (fixture, blip2, files) = setup("tiny-opt", 1);
    let images = blip2.encode_image_files(&files[..1]).unwrap();
    // The fixture's single prompt is a VQA question.
    let (single, _) = prompts(&fixture);
    let question = single
        .strip_prefix("Question: ")
        .and_then(|q| q.strip_suffix(" Answer:"))
        .unwrap();
    let asked = blip2.ask(&images, &[question]).unwrap();
    assert_ids_eq(
        "ask",
        &sequences(&asked),
        &fixture.id_rows("gen/greedy/single"),
    );

    let mut chat = blip2.chat(images).unwrap();
    let first = chat.ask(question).unwrap();
    assert_eq!(first, asked[0]);
    let second = chat.ask("and then?").unwrap();
    assert_eq!(chat.history().len(), 2);
    // The second turn's prompt holds the first turn.
    let prompt = blip2_processor::vqa_prompt_with_context(&chat.history()[..1], "and then?");
    assert!(prompt.starts_with(&format!("Question: {question} Answer: {}.", first.text)));
    let n = second.sequence.len() - 8;
    let ids: Vec<i64> = second.sequence[..n].iter().map(|&t| i64::from(t)).collect();
    assert_eq!(
        blip2.processor().decode(&ids, true).unwrap(),
        prompt,
        "the second turn was asked with its context"
    );
    chat.clear();
    assert!(chat.history().is_empty());
    assert!(matches!(chat.ask("  "), Err(Error::EmptyText { .. })));
}

#[test]
fn user_errors_are_named() {
    let (_, blip2, files) = setup("tiny-opt", 1);
    let images = blip2.encode_image_files(&files).unwrap();
    let err = blip2.generate(&images, &["one prompt"]).unwrap_err();
    assert!(err.to_string().contains("1 prompts for 2 images"), "{err}");
    let err = blip2.chat(images).unwrap_err();
    assert!(err.to_string().contains("one image"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let corrupt = dir.path().join("corrupt.png");
    std::fs::write(&corrupt, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let err = blip2.encode_image_files(&[&corrupt]).unwrap_err();
    assert!(err.to_string().contains("corrupt.png"), "{err}");
    let err = blip2
        .encode_image_files(&[dir.path().join("missing.jpg")])
        .unwrap_err();
    assert!(err.to_string().contains("missing.jpg"), "{err}");

    let mut blip2 = blip2;
    let bad = GenerationConfig {
        num_beams: 0,
        ..blip2.generation_config().clone()
    };
    assert!(blip2.set_generation_config(bad).is_err());
    let err = Blip2::<B>::from_pretrained(
        dir.path().join("nowhere"),
        FloatDType::F32,
        &Default::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("nowhere"), "{err}");
}

#[test]
fn text_features_match_get_text_features() {
    let (fixture, blip2, _) = setup("tiny-t5", 1);
    let (features, mask) = blip2
        .text_features(&["describe the image", "Question: where is the dog? Answer:"])
        .unwrap();
    assert_eq!(
        mask.dims(),
        fixture
            .int_tensor::<B, 2>("features/text/attention_mask", &Default::default())
            .dims()
    );
    blip2_testkit::assert_tensor_close(
        "tiny-t5 text features",
        &features,
        fixture.data("features/text"),
        blip2_testkit::Tol::STAGE,
    );
}

/// A config without `image_token_index` (older transformers): no `<image>` tokens in the prompt, the queries in
/// front of the text. Without padding that is the same input as the `<image>` layout, so the new tokens of a
/// caption and of a question equal the fixture's.
#[test]
fn the_legacy_layout_captions_and_answers_alike() {
    let (fixture, blip2, files) = setup("tiny-opt", 1);
    let config = blip2.generation_config().clone();
    let (model, processor) = (
        blip2::Blip2ForConditionalGeneration::<B>::from_pretrained(
            fixture.dir(),
            FloatDType::F32,
            &Default::default(),
        )
        .unwrap(),
        blip2.processor().clone(),
    );
    let mut model = model;
    model.config.image_token_index = None;
    let mut legacy = Blip2::new(model, processor, &Default::default()).unwrap();
    legacy.set_generation_config(config).unwrap();
    let images = legacy.encode_image_files(&files[..1]).unwrap();
    let tail = |key: &str, n: usize| -> Vec<i64> {
        let row = &fixture.id_rows(key)[0];
        row[row.len() - n..].to_vec()
    };
    let caption = legacy.caption(&images, None).unwrap();
    let got: Vec<i64> = caption[0].sequence.iter().map(|&t| i64::from(t)).collect();
    assert_eq!(got, tail("gen/greedy/noprompt", got.len()), "caption");
    let (single, _) = prompts(&fixture);
    let answer = legacy.generate(&images, &[single.as_str()]).unwrap();
    let got: Vec<i64> = answer[0].sequence.iter().map(|&t| i64::from(t)).collect();
    assert_eq!(got, tail("gen/greedy/single", got.len()), "question");
}

#[test]
fn streamed_text_adds_up_to_the_generated_text() {
    for name in ["tiny-opt", "tiny-t5"] {
        let (fixture, blip2, files) = setup(name, 1);
        let images = encoded(&fixture, &blip2, &files);
        let first = images.select(&[0]).unwrap();
        let mut pieces = Vec::new();
        let streamed = blip2
            .caption_streaming(&first, None, |p| pieces.push(p.to_string()))
            .unwrap();
        assert_eq!(
            streamed,
            blip2.caption(&first, None).unwrap().remove(0),
            "{name}"
        );
        assert_eq!(pieces.concat(), streamed.text, "{name}");
        assert!(pieces.iter().all(|p| !p.is_empty()), "{name}: {pieces:?}");

        let (single, _) = prompts(&fixture);
        let mut pieces = String::new();
        let streamed = blip2
            .generate_streaming(&first, &single, |p| pieces.push_str(p))
            .unwrap();
        let whole = blip2
            .generate(&first, &[single.as_str()])
            .unwrap()
            .remove(0);
        assert_eq!(streamed, whole, "{name}");
        assert_eq!(pieces, whole.text, "{name}");
        assert!(blip2.caption_streaming(&images, None, |_| ()).is_err());
    }
}

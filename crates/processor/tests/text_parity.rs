//! The text side against transformers 5.24's `Blip2Processor` on the fixtures: `input_ids` and
//! `attention_mask` of the single prompt and the padded batch (OPT left-padded with BOS before the text,
//! T5 right-padded with `</s>` after it, the ITM tower's BERT `[CLS] ... [SEP]`), the text-only tokenization,
//! the prompt-less caption inputs, and decoding of generated ids.

use blip2_processor::{
    Blip2Processor, EncodeOptions, Padding, PaddingSide, TruncationSide, vqa_prompt,
};
use blip2_testkit::{Fixture, assert_ids_eq};
use serde_json::Value;

fn open(name: &str) -> (Fixture, Blip2Processor) {
    let fixture = Fixture::open(name);
    let processor =
        Blip2Processor::from_model_dir(fixture.dir()).unwrap_or_else(|e| panic!("{name}: {e}"));
    (fixture, processor)
}

fn prompt(fixture: &Fixture, key: &str) -> String {
    fixture.manifest()["prompts"][key]
        .as_str()
        .unwrap_or_else(|| panic!("prompts.{key} in {}", fixture.name()))
        .to_string()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .expect("a JSON list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

/// `num_query_tokens` as the model has it: `query_tokens` is `[1, n, hidden]`.
fn query_count(fixture: &Fixture) -> usize {
    fixture.manifest()["checkpoint_keys"]["query_tokens"][1]
        .as_u64()
        .expect("query_tokens shape") as usize
}

fn image_token_index(fixture: &Fixture) -> u32 {
    fixture.manifest()["image_token_index"]
        .as_u64()
        .expect("image_token_index") as u32
}

/// The single prompt and the batch through the processor with default options (pad to the longest on the
/// config's side), as the generator called `processor(images=..., text=..., padding=True)`.
fn check_prompts(name: &str) {
    let (fixture, processor) = open(name);
    assert_eq!(processor.num_query_tokens(), query_count(&fixture));
    assert_eq!(processor.image_token_id(), image_token_index(&fixture));

    let single = processor
        .encode_prompt(&prompt(&fixture, "single"), &EncodeOptions::default())
        .unwrap();
    assert_ids_eq(
        &format!("{name} input_ids/single"),
        &single.input_ids,
        &fixture.id_rows("input_ids/single"),
    );
    assert_ids_eq(
        &format!("{name} attention_mask/single"),
        &single.attention_mask,
        &fixture.id_rows("attention_mask/single"),
    );

    let prompts = strings(&fixture.manifest()["prompts"]["batch"]);
    let batch = processor
        .encode_prompts(&prompts, &EncodeOptions::default())
        .unwrap();
    assert_ids_eq(
        &format!("{name} input_ids/batch"),
        &batch.input_ids,
        &fixture.id_rows("input_ids/batch"),
    );
    assert_ids_eq(
        &format!("{name} attention_mask/batch"),
        &batch.attention_mask,
        &fixture.id_rows("attention_mask/batch"),
    );
    assert_eq!(batch.seq_len().unwrap(), batch.input_ids[0].len());

    // The text-only tokenization (`processor.tokenizer(prompts, padding=True)`): no `<image>` tokens.
    let text = processor
        .tokenizer()
        .encode_batch(&prompts, &EncodeOptions::default())
        .unwrap();
    assert_ids_eq(
        &format!("{name} features/text/input_ids"),
        &text.input_ids,
        &fixture.id_rows("features/text/input_ids"),
    );
    assert_ids_eq(
        &format!("{name} features/text/attention_mask"),
        &text.attention_mask,
        &fixture.id_rows("features/text/attention_mask"),
    );

    // Captioning without a prompt.
    let caption = processor.caption_inputs(1).unwrap();
    assert_ids_eq(
        &format!("{name} gen/greedy/noprompt/input_ids"),
        &caption.input_ids,
        &fixture.id_rows("gen/greedy/noprompt/input_ids"),
    );
    assert!(caption.attention_mask[0].iter().all(|&m| m == 1));
    let two = processor.caption_inputs(2).unwrap();
    assert_eq!(two.input_ids, vec![caption.input_ids[0].clone(); 2]);

    // Decoding what `generate` returned, special tokens (`<image>`, pads, BOS/EOS) skipped.
    let generated = fixture.id_rows("gen/greedy/batch");
    let decoded = processor.batch_decode(&generated, true).unwrap();
    let want = strings(&fixture.manifest()["generation"]["decoded_greedy_batch"]);
    assert_eq!(decoded, want, "{name}: decoded gen/greedy/batch");
}

#[test]
fn tiny_opt_matches_transformers() {
    check_prompts("tiny-opt");
}

#[test]
fn tiny_t5_matches_transformers() {
    check_prompts("tiny-t5");
}

#[test]
fn padding_sides_follow_the_configs() {
    // The generator saved OPT's tokenizer with `padding_side: left` and T5's with `right`; the references
    // show it (OPT: `<image> x n, <pad>..., </s>, text`; T5: `<image> x n, text, </s>, <pad>...`).
    let (_, opt) = open("tiny-opt");
    let (_, t5) = open("tiny-t5");
    assert_eq!(opt.tokenizer().padding_side(), PaddingSide::Left);
    assert_eq!(t5.tokenizer().padding_side(), PaddingSide::Right);
}

#[test]
fn tiny_itm_matches_transformers() {
    let (fixture, processor) = open("tiny-itm");
    assert_eq!(processor.num_query_tokens(), query_count(&fixture));
    assert_eq!(processor.image_token_id(), image_token_index(&fixture));
    let texts = strings(&fixture.manifest()["texts"]);
    let enc = processor
        .encode_prompts(&texts, &EncodeOptions::default())
        .unwrap();
    assert_ids_eq(
        "tiny-itm input_ids",
        &enc.input_ids,
        &fixture.id_rows("input_ids"),
    );
    assert_ids_eq(
        "tiny-itm attention_mask",
        &enc.attention_mask,
        &fixture.id_rows("attention_mask"),
    );
    let text = processor
        .tokenizer()
        .encode_batch(&texts, &EncodeOptions::default())
        .unwrap();
    assert_ids_eq(
        "tiny-itm text/input_ids",
        &text.input_ids,
        &fixture.id_rows("text/input_ids"),
    );
    assert_ids_eq(
        "tiny-itm text/attention_mask",
        &text.attention_mask,
        &fixture.id_rows("text/attention_mask"),
    );
}

#[test]
fn special_tokens_have_the_fixture_ids() {
    let (fixture, opt) = open("tiny-opt");
    let special = opt.tokenizer().special_tokens();
    let reference = &fixture.manifest()["generation"];
    let pad = reference["pad_token_id"].as_u64().unwrap() as u32;
    assert_eq!(special.pad.as_ref().map(|t| t.id), Some(pad));
    assert_eq!(
        special.bos.as_ref().map(|t| t.content.as_str()),
        Some("</s>")
    );
    assert_eq!(special.bos, special.eos);
    assert_eq!(special.image.content, "<image>");
    assert_eq!(
        opt.tokenizer().len(),
        image_token_index(&fixture) as usize + 1
    );

    let (fixture, t5) = open("tiny-t5");
    let special = t5.tokenizer().special_tokens();
    assert!(special.bos.is_none(), "T5 has no BOS");
    let pad = fixture.manifest()["generation"]["pad_token_id"]
        .as_u64()
        .unwrap() as u32;
    assert_eq!(t5.tokenizer().special_token_id("pad_token").unwrap(), pad);
    assert_eq!(
        t5.tokenizer().special_token_id("image_token").unwrap(),
        image_token_index(&fixture)
    );
}

#[test]
fn the_single_prompts_are_the_vqa_template() {
    for name in ["tiny-opt", "tiny-t5"] {
        let fixture = Fixture::open(name);
        let single = prompt(&fixture, "single");
        let question = single
            .strip_prefix("Question: ")
            .and_then(|q| q.strip_suffix(" Answer:"))
            .expect("a VQA prompt");
        assert_eq!(vqa_prompt(question), single);
    }
}

/// Truncation keeps the special tokens and the `<image>` tokens and cuts the text on the chosen side; the
/// expected rows are built from the untruncated encoding.
#[test]
fn truncation_cuts_the_text_and_keeps_special_and_image_tokens() {
    let (fixture, opt) = open("tiny-opt");
    let n = opt.num_query_tokens();
    let prompts = strings(&fixture.manifest()["prompts"]["batch"]);
    let full = opt
        .encode_prompts(
            &prompts,
            &EncodeOptions::default().with_padding(Padding::DoNotPad),
        )
        .unwrap();
    let max_length = n + 4;
    for side in [TruncationSide::Right, TruncationSide::Left] {
        let options = EncodeOptions::default()
            .with_truncation(true)
            .with_truncation_side(side)
            .with_max_length(max_length)
            .with_padding(Padding::MaxLength);
        let cut = opt.encode_prompts(&prompts, &options).unwrap();
        for (row, full_row) in cut.input_ids.iter().zip(&full.input_ids) {
            // OPT: `<image> x n`, BOS, then text tokens; every prompt is longer than 3 text tokens.
            let text = &full_row[n + 1..];
            let kept = match side {
                TruncationSide::Right => &text[..3],
                TruncationSide::Left => &text[text.len() - 3..],
            };
            let want: Vec<i64> = full_row[..n + 1].iter().chain(kept).copied().collect();
            assert_eq!(row, &want, "{side:?}");
        }
        assert!(cut.attention_mask.iter().flatten().all(|&m| m == 1));
    }

    // T5 keeps its trailing `</s>`; a short row is padded to max_length on the right.
    let (fixture, t5) = open("tiny-t5");
    let n = t5.num_query_tokens();
    let prompts = strings(&fixture.manifest()["prompts"]["batch"]);
    let full = t5
        .encode_prompts(
            &prompts,
            &EncodeOptions::default().with_padding(Padding::DoNotPad),
        )
        .unwrap();
    let options = EncodeOptions::default()
        .with_truncation(true)
        .with_max_length(n + 6);
    let cut = t5.encode_prompts(&prompts, &options).unwrap();
    let eos = i64::from(t5.tokenizer().special_tokens().eos.as_ref().unwrap().id);
    for (row, full_row) in cut.input_ids.iter().zip(&full.input_ids) {
        let want: Vec<i64> = full_row[..n + 5].iter().copied().chain([eos]).collect();
        assert_eq!(row, &want);
    }
    let padded = t5
        .encode_prompts(
            &prompts[..1],
            &EncodeOptions::default()
                .with_padding(Padding::MaxLength)
                .with_max_length(full.input_ids[0].len() + 3),
        )
        .unwrap();
    let pad = i64::from(t5.tokenizer().special_tokens().pad.as_ref().unwrap().id);
    let mut want = full.input_ids[0].clone();
    want.extend([pad; 3]);
    assert_eq!(padded.input_ids[0], want);
    assert_eq!(
        padded.attention_mask[0].iter().filter(|&&m| m == 0).count(),
        3
    );
}

#[test]
fn padding_side_can_be_overridden() {
    let (fixture, opt) = open("tiny-opt");
    let n = opt.num_query_tokens();
    let prompts = strings(&fixture.manifest()["prompts"]["batch"]);
    let left = opt
        .encode_prompts(&prompts, &EncodeOptions::default())
        .unwrap();
    let right = opt
        .encode_prompts(
            &prompts,
            &EncodeOptions::default().with_padding_side(PaddingSide::Right),
        )
        .unwrap();
    let pad = i64::from(opt.tokenizer().special_tokens().pad.as_ref().unwrap().id);
    for (l, r) in left.input_ids.iter().zip(&right.input_ids) {
        assert_eq!(l[..n], r[..n]);
        let text_l: Vec<i64> = l[n..].iter().copied().filter(|&t| t != pad).collect();
        let text_r: Vec<i64> = r[n..].iter().copied().filter(|&t| t != pad).collect();
        assert_eq!(text_l, text_r);
        let pads = l.len() - n - text_l.len();
        assert!(r[r.len() - pads..].iter().all(|&t| t == pad));
    }
}

#[test]
fn decoding_keeps_special_tokens_unless_asked() {
    let (fixture, opt) = open("tiny-opt");
    let ids = &fixture.id_rows("input_ids/single")[0];
    let with = opt.decode(ids, false).unwrap();
    assert!(with.starts_with("<image><image>"), "{with}");
    let without = opt.decode(ids, true).unwrap();
    assert_eq!(without, prompt(&fixture, "single"));
}

#[test]
fn batch_encodings_become_int_tensors() {
    let (fixture, opt) = open("tiny-opt");
    let prompts = strings(&fixture.manifest()["prompts"]["batch"]);
    let enc = opt
        .encode_prompts(&prompts, &EncodeOptions::default())
        .unwrap();
    let device = Default::default();
    let ids = enc
        .input_ids_tensor::<blip2_testkit::Flex>(&device)
        .unwrap();
    let mask = enc
        .attention_mask_tensor::<blip2_testkit::NdArray>(&Default::default())
        .unwrap();
    assert_eq!(ids.dims(), [2, enc.input_ids[0].len()]);
    let got: Vec<i64> = ids.into_data().convert::<i64>().to_vec().unwrap();
    assert_eq!(got, enc.input_ids.concat());
    let got: Vec<i64> = mask.into_data().convert::<i64>().to_vec().unwrap();
    assert_eq!(got, enc.attention_mask.concat());
}

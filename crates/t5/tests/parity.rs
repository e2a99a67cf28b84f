//! T5 against transformers 5.24 on the fixtures: the bucket function, encoder outputs and teacher-forced logits of
//! the standalone Flan-T5-like (gated gelu_new, untied head) and v1.0-like (relu, tied head with rescale) models and
//! of BLIP-2's Flan-T5 fed `inputs_embeds` (exact gelu), the loss, and cached decoding against one full pass.

use blip2_nn::backend::FloatDType;
use blip2_t5::{LogitsFor, T5ForConditionalGeneration, T5Input, relative_position_bucket};
use blip2_testkit::{Fixture, Tol, assert_tensor_close};
use burn::prelude::*;

fn load<B: Backend>(fixture: &Fixture, device: &B::Device) -> T5ForConditionalGeneration<B> {
    T5ForConditionalGeneration::<B>::from_pretrained(fixture.dir(), FloatDType::F32, device)
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.name()))
}

fn ints(fixture: &Fixture, key: &str) -> Vec<i64> {
    fixture
        .data(key)
        .clone()
        .convert_dtype(burn::tensor::DType::I64)
        .to_vec()
        .unwrap()
}

/// Relative distances -40..=40 with 8 buckets and max distance 12: the exact buckets, the log buckets and the
/// clamp, both directions.
#[test]
fn buckets_match_transformers() {
    let fixture = Fixture::open("tiny-t5-lm");
    let rel = ints(&fixture, "bucket/relative_position");
    for (key, bidirectional) in [("bucket/bidirectional", true), ("bucket/causal", false)] {
        let want = ints(&fixture, key);
        let got: Vec<i64> = rel
            .iter()
            .map(|&r| relative_position_bucket(r, bidirectional, 8, 12) as i64)
            .collect();
        assert_eq!(got, want, "{key}");
    }
}

fn standalone_logits_and_loss<B: Backend>(device: &B::Device) {
    for name in ["tiny-t5-lm", "tiny-t5-lm-v1"] {
        let fixture = Fixture::open(name);
        let t5 = load::<B>(&fixture, device);
        for tag in ["single", "batch"] {
            let ids = fixture.int_tensor::<B, 2>(&format!("input_ids/{tag}"), device);
            let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
            let encoded = t5.encode(T5Input::Ids(ids), Some(mask));
            let want = fixture.data(&format!("encoder/last_hidden_state/{tag}"));
            assert_tensor_close(
                &format!("{name}:encoder/{tag}"),
                &encoded,
                want,
                Tol::LOGITS,
            );
        }
        let ids = fixture.int_tensor::<B, 2>("input_ids/batch", device);
        let mask = fixture.int_tensor::<B, 2>("attention_mask/batch", device);
        let labels = fixture.int_tensor::<B, 2>("labels/batch", device);
        let decoder_ids = t5.shift_right(labels.clone());
        assert_eq!(
            decoder_ids.to_data().convert::<i64>(),
            fixture
                .data("decoder_input_ids/batch")
                .clone()
                .convert::<i64>()
        );
        let encoded = t5.encode(T5Input::Ids(ids), Some(mask.clone()));
        let logits = t5.decode(decoder_ids, encoded, Some(mask), None, LogitsFor::All);
        assert_tensor_close(
            &format!("{name}:logits"),
            &logits,
            fixture.data("logits/batch"),
            Tol::LOGITS,
        );
        let loss = t5.loss(logits, labels);
        assert_tensor_close(
            &format!("{name}:loss"),
            &loss,
            fixture.data("loss/batch"),
            Tol::LOGITS,
        );
    }
}

/// BLIP-2 feeds the encoder `inputs_embeds` (projected queries, then the prompt) with the processor's mask.
fn blip2_t5_from_embeddings<B: Backend>(device: &B::Device) {
    for name in ["tiny-t5", "tiny-t5-saved"] {
        let fixture = Fixture::open(name);
        let t5 = load::<B>(&fixture, device);
        for tag in ["single", "batch"] {
            let embeds = fixture.tensor::<B, 3>(&format!("lm/inputs_embeds/{tag}"), device);
            let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
            let encoded = t5.encode(T5Input::Embeds(embeds), Some(mask.clone()));
            let want = fixture.data(&format!("lm/encoder_last_hidden_state/{tag}"));
            assert_tensor_close(
                &format!("{name}:encoder/{tag}"),
                &encoded,
                want,
                Tol::LOGITS,
            );
            let labels = fixture.int_tensor::<B, 2>(&format!("labels/{tag}"), device);
            let logits = t5.decode(
                t5.shift_right(labels.clone()),
                encoded,
                Some(mask),
                None,
                LogitsFor::All,
            );
            let want = fixture.data(&format!("lm/logits/{tag}"));
            assert_tensor_close(
                &format!("{name}:lm/logits/{tag}"),
                &logits,
                want,
                Tol::LOGITS,
            );
            if tag == "batch" {
                let loss = t5.loss(logits, labels);
                assert_tensor_close(
                    &format!("{name}:lm/loss"),
                    &loss,
                    fixture.data("lm/loss/batch"),
                    Tol::LOGITS,
                );
            }
        }
    }
}

/// Decoding one token at a time with the cache gives the teacher-forced logits at every step, for a padded batch;
/// reordering the cache reorders the batch.
fn cached_decoding_matches_full_pass<B: Backend>(device: &B::Device) {
    for name in ["tiny-t5-lm", "tiny-t5-lm-v1"] {
        let fixture = Fixture::open(name);
        let t5 = load::<B>(&fixture, device);
        let ids = fixture.int_tensor::<B, 2>("input_ids/batch", device);
        let mask = fixture.int_tensor::<B, 2>("attention_mask/batch", device);
        let decoder_ids = fixture.int_tensor::<B, 2>("decoder_input_ids/batch", device);
        let encoded = t5.encode(T5Input::Ids(ids), Some(mask.clone()));
        let full = t5.decode(
            decoder_ids.clone(),
            encoded.clone(),
            Some(mask.clone()),
            None,
            LogitsFor::All,
        );
        let steps = 8;
        let mut cache = t5.new_cache();
        for t in 0..steps {
            let token = decoder_ids.clone().narrow(1, t, 1);
            let step = t5.decode(
                token,
                encoded.clone(),
                Some(mask.clone()),
                Some(&mut cache),
                LogitsFor::Last,
            );
            let want = full.clone().narrow(1, t, 1).to_data();
            assert_tensor_close(
                &format!("{name}: cached step {t}"),
                &step,
                &want,
                Tol::LOGITS,
            );
        }
        let order = Tensor::<B, 1, Int>::from_ints([1, 0], device);
        cache.reorder(order.clone());
        let token = decoder_ids.narrow(1, steps, 1).select(0, order.clone());
        let step = t5.decode(
            token,
            encoded.select(0, order.clone()),
            Some(mask.select(0, order.clone())),
            Some(&mut cache),
            LogitsFor::Last,
        );
        let want = full.narrow(1, steps, 1).select(0, order).to_data();
        assert_tensor_close(
            &format!("{name}: reordered step"),
            &step,
            &want,
            Tol::LOGITS,
        );
    }
}

blip2_testkit::backend_tests!(
    standalone_logits_and_loss,
    blip2_t5_from_embeddings,
    cached_decoding_matches_full_pass
);

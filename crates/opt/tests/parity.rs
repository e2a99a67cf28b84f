//! OPT against transformers 5.24 on the fixtures: logits of the standalone OPTs (pre-LN, and the opt-350m-like
//! post-LN model with `project_in`/`project_out`) for a single prompt and a left-padded batch, BLIP-2's OPT fed
//! `inputs_embeds`, the LM loss, cached decoding against one full forward, and cached greedy decoding of one row
//! and of two against transformers' logits at every step.

use blip2_nn::backend::FloatDType;
use blip2_opt::{LogitsFor, OptForCausalLm, OptInput};
use blip2_testkit::{Fixture, Tol, assert_tensor_close};
use burn::prelude::*;

fn load<B: Backend>(fixture: &Fixture, device: &B::Device) -> OptForCausalLm<B> {
    OptForCausalLm::<B>::from_pretrained(fixture.dir(), FloatDType::F32, device)
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.name()))
}

fn standalone_logits_and_loss<B: Backend>(device: &B::Device) {
    for name in ["tiny-opt-lm", "tiny-opt-lm-350m"] {
        let fixture = Fixture::open(name);
        let lm = load::<B>(&fixture, device);
        for tag in ["single", "batch"] {
            let ids = fixture.int_tensor::<B, 2>(&format!("input_ids/{tag}"), device);
            let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
            let input = OptInput::Ids(ids);
            lm.check(&input, Some(&mask), None)
                .expect("fixture inputs are valid");
            let logits = lm.forward(input, Some(mask), None, LogitsFor::All);
            let want = fixture.data(&format!("logits/{tag}"));
            assert_tensor_close(&format!("{name}:logits/{tag}"), &logits, want, Tol::LOGITS);
            if tag == "batch" {
                let loss = lm.loss(logits, fixture.int_tensor::<B, 2>("labels/batch", device));
                assert_tensor_close(
                    &format!("{name}:loss"),
                    &loss,
                    fixture.data("loss/batch"),
                    Tol::LOGITS,
                );
            }
        }
    }
}

/// BLIP-2 calls its OPT with `inputs_embeds` (the `<image>` rows replaced by projected queries) and a mask whose
/// left pads sit between the image tokens and BOS.
fn blip2_opt_from_embeddings<B: Backend>(device: &B::Device) {
    for name in ["tiny-opt", "tiny-opt-saved"] {
        let fixture = Fixture::open(name);
        let lm = load::<B>(&fixture, device);
        for tag in ["single", "batch"] {
            let embeds = fixture.tensor::<B, 3>(&format!("lm/inputs_embeds/{tag}"), device);
            let mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
            let logits = lm.forward(OptInput::Embeds(embeds), Some(mask), None, LogitsFor::All);
            let want = fixture.data(&format!("lm/logits/{tag}"));
            assert_tensor_close(
                &format!("{name}:lm/logits/{tag}"),
                &logits,
                want,
                Tol::LOGITS,
            );
            if tag == "batch" {
                let loss = lm.loss(logits, fixture.int_tensor::<B, 2>("labels/batch", device));
                assert_tensor_close(
                    &format!("{name}:lm/loss"),
                    &loss,
                    fixture.data("lm/loss/batch"),
                    Tol::LOGITS,
                );
            }
        }
        // embed_tokens of the prompt ids equals the fixture's inputs_embeds outside the image rows.
        let ids = fixture.int_tensor::<B, 2>("input_ids/single", device);
        let n = ids.dims()[1];
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture.dir().join("config.json")).unwrap(),
        )
        .unwrap();
        let queries = config["num_query_tokens"]
            .as_u64()
            .expect("a BLIP-2 config") as usize;
        let embedded = lm.embed_tokens(ids).narrow(1, queries, n - queries);
        let want = fixture
            .tensor::<B, 3>("lm/inputs_embeds/single", device)
            .narrow(1, queries, n - queries);
        assert_tensor_close("embed_tokens", &embedded, &want.to_data(), Tol::STAGE);
    }
}

/// Prefill a prefix of a left-padded batch, then feed one token at a time: every step's logits equal the full
/// forward's at that position; `LogitsFor::Last` gives the last row; reordering the cache reorders the batch.
fn cached_decoding_matches_full_forward<B: Backend>(device: &B::Device) {
    for name in ["tiny-opt-lm", "tiny-opt-lm-350m"] {
        let fixture = Fixture::open(name);
        let lm = load::<B>(&fixture, device);
        let ids = fixture.int_tensor::<B, 2>("input_ids/batch", device);
        let mask = fixture.int_tensor::<B, 2>("attention_mask/batch", device);
        let [batch, len] = ids.dims();
        let full = lm.forward(
            OptInput::Ids(ids.clone()),
            Some(mask.clone()),
            None,
            LogitsFor::All,
        );

        let prefix = len - 4;
        let mut cache = lm.new_cache();
        let first = lm.forward(
            OptInput::Ids(ids.clone().narrow(1, 0, prefix)),
            Some(mask.clone().narrow(1, 0, prefix)),
            Some(&mut cache),
            LogitsFor::Last,
        );
        let want = full.clone().narrow(1, prefix - 1, 1).to_data();
        assert_tensor_close(&format!("{name}: prefill last"), &first, &want, Tol::LOGITS);
        for t in prefix..len {
            let step_ids = ids.clone().narrow(1, t, 1);
            let step_mask = mask.clone().narrow(1, 0, t + 1);
            lm.check(
                &OptInput::Ids(step_ids.clone()),
                Some(&step_mask),
                Some(&cache),
            )
            .unwrap();
            let step = lm.forward(
                OptInput::Ids(step_ids),
                Some(step_mask),
                Some(&mut cache),
                LogitsFor::All,
            );
            let want = full.clone().narrow(1, t, 1).to_data();
            assert_tensor_close(
                &format!("{name}: cached step {t}"),
                &step,
                &want,
                Tol::LOGITS,
            );
        }
        assert_eq!(cache.seq_len(), len);

        // Reordering the cache along the batch: feeding the swapped last token gives the swapped logits.
        let mut cache = lm.new_cache();
        lm.forward(
            OptInput::Ids(ids.clone().narrow(1, 0, len - 1)),
            Some(mask.clone().narrow(1, 0, len - 1)),
            Some(&mut cache),
            LogitsFor::Last,
        );
        let order = Tensor::<B, 1, Int>::from_ints([1, 0], device);
        assert_eq!(batch, 2);
        cache.reorder(order.clone());
        let swapped_ids = ids.clone().narrow(1, len - 1, 1).select(0, order.clone());
        let swapped_mask = mask.clone().select(0, order.clone());
        let step = lm.forward(
            OptInput::Ids(swapped_ids),
            Some(swapped_mask),
            Some(&mut cache),
            LogitsFor::Last,
        );
        let want = full.narrow(1, len - 1, 1).select(0, order).to_data();
        assert_tensor_close(
            &format!("{name}: reordered step"),
            &step,
            &want,
            Tol::LOGITS,
        );
    }
}

/// One row and then two, as a generation loop drives them: the prompt's last logits, then each greedy token of
/// the reference fed back through the cache with the mask grown by one, every step's logits against
/// transformers' raw step logits (`gen/greedy/{tag}/logits`, `[step, rows, vocab]`). The cached-decoding test
/// above runs two rows only; one row is the case Burn 0.21's fusion got wrong on wgpu, which is why blip2's GPU
/// aliases are unfused (docs/backends.md).
fn greedy_steps_match_the_reference_logits<B: Backend>(device: &B::Device) {
    for name in ["tiny-opt-lm", "tiny-opt-lm-350m"] {
        let fixture = Fixture::open(name);
        let lm = load::<B>(&fixture, device);
        for tag in ["single", "batch"] {
            let ids = fixture.int_tensor::<B, 2>(&format!("input_ids/{tag}"), device);
            let mut mask = fixture.int_tensor::<B, 2>(&format!("attention_mask/{tag}"), device);
            let sequences = fixture.int_tensor::<B, 2>(&format!("gen/greedy/{tag}"), device);
            let steps = fixture.tensor::<B, 3>(&format!("gen/greedy/{tag}/logits"), device);
            let [rows, prompt_len] = ids.dims();
            let [count, _, vocab] = steps.dims();
            let want = |s: usize| {
                steps
                    .clone()
                    .narrow(0, s, 1)
                    .reshape([rows, 1, vocab])
                    .to_data()
            };
            let mut cache = lm.new_cache();
            let mut input = ids;
            for s in 0..count {
                if s > 0 {
                    input = sequences.clone().narrow(1, prompt_len + s - 1, 1); // [rows, 1]
                    mask = Tensor::cat(vec![mask, Tensor::ones([rows, 1], device)], 1);
                }
                let logits = lm.forward(
                    OptInput::Ids(input.clone()),
                    Some(mask.clone()),
                    Some(&mut cache),
                    LogitsFor::Last,
                );
                assert_tensor_close(
                    &format!("{name} {tag}: step {s}"),
                    &logits,
                    &want(s),
                    Tol::LOGITS,
                );
            }
        }
    }
}

blip2_testkit::backend_tests!(
    standalone_logits_and_loss,
    blip2_opt_from_embeddings,
    cached_decoding_matches_full_forward,
    greedy_steps_match_the_reference_logits
);

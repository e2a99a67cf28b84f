//! The Q-Former against transformers 5.24 on the fixtures' tiny random-weight models: the input layernorm, every
//! layer, `last_hidden_state` and the pooler, for the captioning path (cross-attention every 2nd layer in
//! tiny-opt, every layer in tiny-t5), and the retrieval fixture's image-text matching and text-only paths; plus a
//! padded text batch against each row run alone.

use blip2_qformer::{QFormer, QFormerInput};
use blip2_testkit::{Fixture, Tol, assert_tensor_close};
use burn::prelude::*;

fn load<B: Backend>(fixture: &Fixture, device: &B::Device) -> QFormer<B> {
    QFormer::<B>::from_pretrained(fixture.dir(), device)
        .unwrap_or_else(|e| panic!("{}: {e}", fixture.name()))
}

/// Compares every stage of a run with the references under `prefix` (`layernorm`, `layer.N`, `last_hidden_state`,
/// and `pooler_output` when the fixture has it).
fn check_stages<B: Backend>(
    qformer: &QFormer<B>,
    fixture: &Fixture,
    input: QFormerInput<B>,
    prefix: &str,
) {
    qformer.check(&input).expect("fixture inputs are valid");
    let out = qformer.forward(input, true);
    let hidden = out.hidden_states.expect("hidden states were asked for");
    let name = |stage: &str| format!("{}:{prefix}/{stage}", fixture.name());
    assert_tensor_close(
        &name("layernorm"),
        &hidden[0],
        fixture.data(&format!("{prefix}/layernorm")),
        Tol::STAGE,
    );
    for (i, state) in hidden[1..].iter().enumerate() {
        let key = format!("{prefix}/layer.{i}");
        assert_tensor_close(
            &name(&format!("layer.{i}")),
            state,
            fixture.data(&key),
            Tol::STAGE,
        );
    }
    assert!(
        !fixture.has(&format!("{prefix}/layer.{}", hidden.len() - 1)),
        "a layer is missing"
    );
    let last = fixture.data(&format!("{prefix}/last_hidden_state"));
    assert_tensor_close(
        &name("last_hidden_state"),
        &out.last_hidden_state,
        last,
        Tol::STAGE,
    );
    if fixture.has(&format!("{prefix}/pooler_output")) {
        let pooled = fixture.data(&format!("{prefix}/pooler_output"));
        assert_tensor_close(
            &name("pooler_output"),
            &out.pooler_output,
            pooled,
            Tol::STAGE,
        );
    }
}

fn queries_read_images<B: Backend>(device: &B::Device) {
    for name in ["tiny-opt", "tiny-t5", "tiny-opt-saved", "tiny-t5-saved"] {
        let fixture = Fixture::open(name);
        let qformer = load::<B>(&fixture, device);
        assert!(
            qformer.embeddings.is_none(),
            "captioning checkpoints have no text tower"
        );
        let image = fixture.tensor::<B, 3>("vision/last_hidden_state", device);
        check_stages(&qformer, &fixture, QFormerInput::Image(image), "qformer");
        // get_qformer_features is the same run.
        let out = qformer.forward_image(fixture.tensor::<B, 3>("vision/last_hidden_state", device));
        assert_tensor_close(
            name,
            &out.last_hidden_state,
            fixture.data("features/qformer"),
            Tol::STAGE,
        );
    }
}

fn retrieval_paths<B: Backend>(device: &B::Device) {
    let fixture = Fixture::open("tiny-itm");
    let qformer = load::<B>(&fixture, device);
    let image = || fixture.tensor::<B, 3>("vision/last_hidden_state", device);
    let ids = || fixture.int_tensor::<B, 2>("text/input_ids", device);
    let mask = || fixture.int_tensor::<B, 2>("text/attention_mask", device);

    // The text tower's embeddings alone, and [queries; text] as the ITM path builds it.
    let embeddings = qformer
        .embeddings
        .as_ref()
        .expect("the ITM checkpoint has a text tower");
    let text = embeddings.forward(ids());
    assert_tensor_close(
        "itc/text_embeddings",
        &text,
        fixture.data("itc/text_embeddings"),
        Tol::STAGE,
    );
    let [batch, _, hidden] = text.dims();
    let queries = qformer
        .query_tokens
        .val()
        .expand([batch, qformer.num_query_tokens(), hidden]);
    let joined = Tensor::cat(vec![queries, text], 1);
    assert_tensor_close(
        "itm/embeddings",
        &joined,
        fixture.data("itm/embeddings"),
        Tol::STAGE,
    );

    check_stages(
        &qformer,
        &fixture,
        QFormerInput::Image(image()),
        "itc/image_qformer",
    );
    let itm = QFormerInput::ImageText {
        image: image(),
        input_ids: ids(),
        attention_mask: mask(),
    };
    check_stages(&qformer, &fixture, itm, "itm/qformer");
    let text_only = QFormerInput::Text {
        input_ids: ids(),
        attention_mask: mask(),
    };
    check_stages(&qformer, &fixture, text_only, "itc/text_qformer");
}

/// Each row of the right-padded text batch equals the same row run alone without its padding, on the valid
/// positions (queries and real tokens), in both text paths.
fn padded_rows_equal_unpadded_runs<B: Backend>(device: &B::Device) {
    let fixture = Fixture::open("tiny-itm");
    let qformer = load::<B>(&fixture, device);
    let n = qformer.num_query_tokens();
    let image = fixture.tensor::<B, 3>("vision/last_hidden_state", device);
    let ids = fixture.int_tensor::<B, 2>("text/input_ids", device);
    let mask = fixture.int_tensor::<B, 2>("text/attention_mask", device);
    let lengths: Vec<usize> = fixture
        .id_rows("text/attention_mask")
        .iter()
        .map(|row| row.iter().filter(|&&m| m == 1).count())
        .collect();
    assert!(
        lengths.iter().any(|&l| l < ids.dims()[1]),
        "the fixture batch has a padded row"
    );
    let batch_itm = qformer.forward(
        QFormerInput::ImageText {
            image: image.clone(),
            input_ids: ids.clone(),
            attention_mask: mask.clone(),
        },
        false,
    );
    let batch_text = qformer.forward(
        QFormerInput::Text {
            input_ids: ids.clone(),
            attention_mask: mask.clone(),
        },
        false,
    );
    for (row, &len) in lengths.iter().enumerate() {
        let row_ids = ids.clone().narrow(0, row, 1).narrow(1, 0, len);
        let row_mask = mask.clone().narrow(0, row, 1).narrow(1, 0, len);
        let alone = qformer.forward(
            QFormerInput::ImageText {
                image: image.clone().narrow(0, row, 1),
                input_ids: row_ids.clone(),
                attention_mask: row_mask.clone(),
            },
            false,
        );
        let padded = batch_itm
            .last_hidden_state
            .clone()
            .narrow(0, row, 1)
            .narrow(1, 0, n + len);
        assert_tensor_close(
            &format!("itm row {row}"),
            &padded,
            &alone.last_hidden_state.to_data(),
            Tol::STAGE,
        );
        let alone = qformer.forward(
            QFormerInput::Text {
                input_ids: row_ids,
                attention_mask: row_mask,
            },
            false,
        );
        let padded = batch_text
            .last_hidden_state
            .clone()
            .narrow(0, row, 1)
            .narrow(1, 0, len);
        assert_tensor_close(
            &format!("text row {row}"),
            &padded,
            &alone.last_hidden_state.to_data(),
            Tol::STAGE,
        );
    }
}

blip2_testkit::backend_tests!(
    queries_read_images,
    retrieval_paths,
    padded_rows_equal_unpadded_runs
);

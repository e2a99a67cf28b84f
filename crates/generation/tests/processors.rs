//! Each logits processor, and transformers' chain of them, against the `logits-processors` fixture: fixed
//! scores `[2, 40]`, ids `[2, 10]` (row 1 left-padded by two pads), every processor's output from
//! transformers 5.24. Bit-exact: the processors do what torch does in f32.

use blip2_generation::GenerationConfig;
use blip2_generation::processors::{
    LogitsProcessor, MinLength, MinNewTokens, NoBadWords, NoRepeatNGram, ProcessorList,
    RepetitionPenalty, RowIds, Temperature, TopK, TopP,
};
use blip2_testkit::{Fixture, Tol, assert_close};
use burn::tensor::TensorData;

struct Case {
    fixture: Fixture,
    ids: Vec<Vec<u32>>,
    padding: Vec<usize>,
    eos: Vec<u32>,
}

impl Case {
    fn open() -> Self {
        let fixture = Fixture::open("logits-processors");
        let ids = fixture
            .id_rows("input_ids")
            .into_iter()
            .map(|r| r.into_iter().map(|t| t as u32).collect())
            .collect();
        let padding = fixture
            .id_rows("attention_mask")
            .iter()
            .map(|m| m.iter().position(|&v| v != 0).unwrap_or(0))
            .collect();
        let eos: Vec<u32> = fixture
            .data("eos_token_id")
            .clone()
            .convert::<i64>()
            .to_vec::<i64>()
            .unwrap()
            .into_iter()
            .map(|t| t as u32)
            .collect();
        Self {
            fixture,
            ids,
            padding,
            eos,
        }
    }

    /// Runs `process` on both rows (with or without their left padding) and compares with `key`.
    fn check(&self, key: &str, ignore_pads: bool, process: impl Fn(&RowIds<'_>, &mut [f32])) {
        let scores = self.fixture.data("scores").clone();
        let vocab = scores.shape[1];
        let mut values: Vec<f32> = scores.to_vec().unwrap();
        for (r, row) in values.chunks_mut(vocab).enumerate() {
            let padding = if ignore_pads { self.padding[r] } else { 0 };
            process(&RowIds::with_padding(&self.ids[r], padding), row);
        }
        let got = TensorData::new(values, [self.ids.len(), vocab]);
        assert_close(key, &got, self.fixture.data(key), Tol::EXACT);
    }

    fn one(&self, key: &str, ignore_pads: bool, p: impl LogitsProcessor) {
        self.check(key, ignore_pads, |row, scores| p.process(row, scores));
    }
}

#[test]
fn each_processor_matches_transformers() {
    let case = Case::open();
    assert_eq!(case.padding, [0, 2], "row 1 is left-padded by two");
    let eos = &case.eos;
    case.one("repetition_penalty/1.3", false, RepetitionPenalty::new(1.3));
    case.one("repetition_penalty/0.8", false, RepetitionPenalty::new(0.8));
    case.one(
        "repetition_penalty/1.3/ignore_pads",
        true,
        RepetitionPenalty::new(1.3),
    );
    case.one("no_repeat_ngram/2", false, NoRepeatNGram::new(2));
    case.one("no_repeat_ngram/3", false, NoRepeatNGram::new(3));
    case.one(
        "bad_words",
        false,
        NoBadWords::new(&[vec![5], vec![6, 7]], eos),
    );
    case.one("min_length/12", false, MinLength::new(12, eos));
    case.one("min_length/10", false, MinLength::new(10, eos));
    case.one(
        "min_new_tokens/3_skip_8",
        false,
        MinNewTokens::new(8, 3, eos),
    );
    case.one("temperature/0.7", false, Temperature::new(0.7));
    case.one("top_k/1", false, TopK::new(1, 1));
    case.one("top_k/8", false, TopK::new(8, 1));
    case.one("top_p/0.8", false, TopP::new(0.8, 1));
    case.one("top_p/0.3/min_tokens_to_keep_2", false, TopP::new(0.3, 2));
}

#[test]
fn the_chain_matches_transformers_by_hand_and_from_a_config() {
    let case = Case::open();
    let order: Vec<&str> = case.fixture.manifest()["chain_order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(order.len(), 8, "{order:?}");
    let eos = &case.eos;
    let mut list = ProcessorList::new();
    list.push(Box::new(RepetitionPenalty::new(1.3)));
    list.push(Box::new(NoRepeatNGram::new(2)));
    list.push(Box::new(NoBadWords::new(&[vec![5], vec![6, 7]], eos)));
    list.push(Box::new(MinLength::new(12, eos)));
    list.push(Box::new(MinNewTokens::new(8, 3, eos)));
    list.push(Box::new(Temperature::new(0.7)));
    list.push(Box::new(TopK::new(8, 1)));
    list.push(Box::new(TopP::new(0.8, 1)));
    case.check("chain", true, |row, scores| list.process(row, scores));

    // The same options in a config (min_new_tokens 3 after an 8-id prompt bans eos as min_length 12 does here).
    let config = GenerationConfig {
        repetition_penalty: 1.3,
        no_repeat_ngram_size: 2,
        bad_words_ids: Some(vec![vec![5], vec![6, 7]]),
        min_length: 12,
        min_new_tokens: Some(3),
        do_sample: true,
        temperature: 0.7,
        top_k: 8,
        top_p: 0.8,
        eos_token_id: eos.clone(),
        ..GenerationConfig::default()
    };
    let list = ProcessorList::from_config(&config, 8);
    assert_eq!(list.len(), 8, "{list:?}");
    case.check("chain", true, |row, scores| list.process(row, scores));
}

#[test]
fn sampling_warpers_apply_only_when_sampling() {
    let greedy = GenerationConfig {
        temperature: 0.5,
        top_k: 3,
        top_p: 0.5,
        ..GenerationConfig::default()
    };
    assert!(ProcessorList::from_config(&greedy, 0).is_empty());
    assert_eq!(greedy.warnings().len(), 3, "{:?}", greedy.warnings());
    let sampling = GenerationConfig {
        do_sample: true,
        ..greedy
    };
    assert_eq!(ProcessorList::from_config(&sampling, 0).len(), 3);
    assert!(sampling.warnings().is_empty());
}

#[test]
fn a_bad_word_equal_to_eos_is_not_banned() {
    let p = NoBadWords::new(&[vec![2], vec![3]], &[2]);
    let mut scores = vec![0.0f32; 4];
    p.process(&RowIds::new(&[]), &mut scores);
    assert_eq!(scores, [0.0, 0.0, 0.0, f32::NEG_INFINITY]);
}

"""The logits processors' references (transformers' `LogitsProcessor`s on fixed inputs)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.generation.logits_process import (
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from .common import FORMAT_VERSION, Refs, versions


# ----------------------------------------------------------------------------------------------------------------
# Logits processors on fixed random logits
# ----------------------------------------------------------------------------------------------------------------


def logits_processors_fixture(out: Path, seed: int) -> None:
    directory = out / "logits-processors"
    directory.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    vocab, batch, length = 40, 2, 10
    scores = torch.randn(batch, vocab, generator=g) * 2.0
    input_ids = torch.randint(10, 20, (batch, length), generator=g)
    input_ids[0, 2:4] = torch.tensor([11, 12])
    input_ids[0, 6:8] = torch.tensor([11, 12])  # a repeated bigram for no-repeat-ngram
    input_ids[1, 8] = 6  # [.., 6] then bad word [6, 7] bans 7
    input_ids[1, :2] = 1  # two left pads
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, :2] = 0
    eos = [3, 9]
    refs = Refs()
    refs.add("scores", scores, "raw logits [batch, vocab] that every processor below is applied to")
    refs.add("input_ids", input_ids, "ids so far [batch, len] (row 1 is left-padded by two pad ids 1)")
    refs.add("attention_mask", attention_mask, "attention mask of input_ids")
    refs.add("eos_token_id", torch.tensor(eos), "eos ids used by bad-words and min-length processors")
    pad_lengths = (attention_mask != 0).int().argmax(dim=1)
    cases = {
        "temperature/0.7": TemperatureLogitsWarper(0.7),
        "top_k/8": TopKLogitsWarper(8),
        "top_k/1": TopKLogitsWarper(1),
        "top_p/0.8": TopPLogitsWarper(0.8),
        "top_p/0.3/min_tokens_to_keep_2": TopPLogitsWarper(0.3, min_tokens_to_keep=2),
        "repetition_penalty/1.3": RepetitionPenaltyLogitsProcessor(1.3),
        "repetition_penalty/0.8": RepetitionPenaltyLogitsProcessor(0.8),
        "repetition_penalty/1.3/ignore_pads": RepetitionPenaltyLogitsProcessor(1.3,
                                                                               prompt_ignore_length=pad_lengths),
        "no_repeat_ngram/2": NoRepeatNGramLogitsProcessor(2),
        "no_repeat_ngram/3": NoRepeatNGramLogitsProcessor(3),
        "bad_words": NoBadWordsLogitsProcessor([[5], [6, 7]], eos_token_id=eos),
        "min_length/12": MinLengthLogitsProcessor(12, eos),
        "min_length/10": MinLengthLogitsProcessor(10, eos),
        "min_new_tokens/3_skip_8": MinNewTokensLengthLogitsProcessor(8, 3, eos),
    }
    descriptions = {
        "temperature/0.7": "TemperatureLogitsWarper(0.7)",
        "top_k/8": "TopKLogitsWarper(8): others -> -inf",
        "top_k/1": "TopKLogitsWarper(1)",
        "top_p/0.8": "TopPLogitsWarper(0.8)",
        "top_p/0.3/min_tokens_to_keep_2": "TopPLogitsWarper(0.3, min_tokens_to_keep=2)",
        "repetition_penalty/1.3": "RepetitionPenaltyLogitsProcessor(1.3) over all of input_ids",
        "repetition_penalty/0.8": "RepetitionPenaltyLogitsProcessor(0.8) (a reward)",
        "repetition_penalty/1.3/ignore_pads": "RepetitionPenaltyLogitsProcessor(1.3) ignoring the left pads, "
                                              "as generate() sets it up from the attention mask",
        "no_repeat_ngram/2": "NoRepeatNGramLogitsProcessor(2)",
        "no_repeat_ngram/3": "NoRepeatNGramLogitsProcessor(3)",
        "bad_words": "NoBadWordsLogitsProcessor([[5], [6, 7]])",
        "min_length/12": "MinLengthLogitsProcessor(12): length 10 < 12, eos ids -> -inf",
        "min_length/10": "MinLengthLogitsProcessor(10): length 10 reached, unchanged",
        "min_new_tokens/3_skip_8": "MinNewTokensLengthLogitsProcessor(prompt 8, min_new_tokens 3): 2 new < 3",
    }
    for key, proc in cases.items():
        refs.add(key, proc(input_ids.clone(), scores.clone()), descriptions[key])
    # The chain in the order GenerationMixin._get_logits_processor builds it (transformers 5.24) for
    # do_sample=True with every option below set.
    chain_order = ["repetition_penalty/1.3/ignore_pads", "no_repeat_ngram/2", "bad_words", "min_length/12",
                   "min_new_tokens/3_skip_8", "temperature/0.7", "top_k/8", "top_p/0.8"]
    s = scores.clone()
    for key in chain_order:
        s = cases[key](input_ids.clone(), s)
    refs.add("chain", s, "all of: " + " -> ".join(chain_order))
    meta = {"format_version": FORMAT_VERSION, "fixture": "logits-processors", "versions": versions(),
            "seed": seed, "chain_order": chain_order}
    refs.save(directory, meta)

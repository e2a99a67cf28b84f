"""The standalone language-model fixtures (OPT, T5): logits, cache steps and generation references."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from transformers import (
    GenerationConfig,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.models.t5.modeling_t5 import T5Attention

from .common import (
    FORMAT_VERSION,
    MAX_NEW_TOKENS,
    MIN_GREEDY_MARGIN,
    NUM_BEAMS,
    Refs,
    check_untied,
    file_keys,
    give_own_head,
    hooks,
    init_weights,
    margin_ok,
    remove,
    untie_t5_head,
    versions,
)
from .vocab import bpe_tokenizer, check_tokenizer_file, unigram_tokenizer


# ----------------------------------------------------------------------------------------------------------------
# Standalone LMs (tiny-opt-lm*, tiny-t5-lm*)
# ----------------------------------------------------------------------------------------------------------------


def lm_generation_refs(refs: Refs, model, enc_single, enc_batch, is_t5: bool) -> float:
    margins = []
    with torch.no_grad():
        for tag, enc in (("single", enc_single), ("batch", enc_batch)):
            g = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                               output_logits=True, return_dict_in_generate=True)
            margins.append(margin_ok(list(g.logits)))
            refs.add(f"gen/greedy/{tag}", g.sequences, "greedy ids as generate() returns them"
                     + ("" if is_t5 else " (prompt followed by new ids)"))
            refs.add(f"gen/greedy/{tag}/logits", torch.stack(g.logits), "raw logits per greedy step [step, B, V]")
            b = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=NUM_BEAMS,
                               output_scores=True, return_dict_in_generate=True)
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}", b.sequences, f"{NUM_BEAMS}-beam ids")
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}/scores", b.sequences_scores, "beam sequences_scores")
        refs.generation_variants = generation_variant_refs(refs, model, enc_batch, is_t5)
    return min(margins)


# Options of generate() beyond greedy / 3 beams, each run on the left-padded batch with more new tokens so that
# beams reach eos and the early-stopping modes part ways. The bad words are picked from the greedy output so
# that banning them changes it.
VARIANT_NEW_TOKENS = 12


def generation_variant_refs(refs: Refs, model, enc, is_t5: bool) -> dict:
    def new_ids(key: str) -> torch.Tensor:
        ids = refs.tensors[key]
        return ids[:, 1:] if is_t5 else ids[:, enc["input_ids"].shape[1]:]

    greedy, beams = new_ids("gen/greedy/batch"), new_ids(f"gen/beam{NUM_BEAMS}/batch")
    bad = [[int(greedy[0, 1])], [int(greedy[1, 2]), int(greedy[1, 3])]]
    # Two eos ids the beams meet early, so that hypotheses end at different steps and the stopping rules differ.
    eos = [int(beams[0, 2]), int(beams[1, 3])]
    processors = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "bad_words_ids": bad, "min_new_tokens": 4}
    variants = {
        "beam3_early_true": {"num_beams": 3, "early_stopping": True},
        "beam3_never_lp2": {"num_beams": 3, "early_stopping": "never", "length_penalty": 2.0},
        "beam3_lp0": {"num_beams": 3, "length_penalty": 0.0},
        "beam4_return3_lpneg": {"num_beams": 4, "num_return_sequences": 3, "length_penalty": -1.0},
        "greedy_processors": dict(processors),
        "beam3_processors": {"num_beams": 3, **processors},
        "greedy_max_length": {"max_new_tokens": None, "max_length": enc["input_ids"].shape[1] + 5},
        "beam3_eos_heuristic": {"num_beams": 3, "eos_token_id": eos},
        "beam3_eos_early_true": {"num_beams": 3, "eos_token_id": eos, "early_stopping": True},
        "beam3_eos_never_lp2": {"num_beams": 3, "eos_token_id": eos, "early_stopping": "never",
                                "length_penalty": 2.0},
        "beam3_eos_never_lpneg": {"num_beams": 3, "eos_token_id": eos, "early_stopping": "never",
                                  "length_penalty": -0.5},
        "greedy_eos": {"eos_token_id": eos},
    }
    meta = {}
    with torch.no_grad():
        for name, options in variants.items():
            kwargs = {"max_new_tokens": VARIANT_NEW_TOKENS, "do_sample": False, **options}
            if kwargs["max_new_tokens"] is None:
                del kwargs["max_new_tokens"]
            beams = kwargs.get("num_beams", 1) > 1
            out = model.generate(**enc, **kwargs, return_dict_in_generate=True, output_scores=True)
            refs.add(f"gen/variant/{name}", out.sequences, f"generate(**batch, {json.dumps(kwargs)})")
            if beams:
                refs.add(f"gen/variant/{name}/scores", out.sequences_scores, "their sequences_scores")
                meta[name] = {"kwargs": kwargs}
            else:
                meta[name] = {"kwargs": kwargs, "min_margin": margin_ok(list(out.scores))}
    return meta


def first_good_seed(name: str, directory: Path, seed: int, attempt) -> tuple[int, Refs, float]:
    """Runs `attempt(model_seed) -> (refs, min_greedy_margin)` with seed, seed + 1000, ... until the greedy margins
    are safe (see MIN_GREEDY_MARGIN), starting each try from an empty directory."""
    for k in range(20):
        model_seed = seed + 1000 * k
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        refs, margin = attempt(model_seed)
        if margin >= MIN_GREEDY_MARGIN:
            return model_seed, refs, margin
    raise RuntimeError(f"{name}: no seed gave greedy margins >= {MIN_GREEDY_MARGIN}")


def lm_meta(name: str, spec: dict, seed: int, model_seed: int, config, margin: float, directory: Path,
            refs: Refs) -> dict:
    generation = {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": NUM_BEAMS, "eos_token_id": config.eos_token_id,
                  "pad_token_id": config.pad_token_id, "min_greedy_margin": margin,
                  "variants": refs.generation_variants}
    if config.is_encoder_decoder:
        generation["decoder_start_token_id"] = config.decoder_start_token_id
    return {"format_version": FORMAT_VERSION, "fixture": name, "what": spec["what"], "versions": versions(),
            "seed": seed, "model_seed": model_seed, "attn_implementation": "eager", "dtype": "float32",
            "prompts": spec["prompts"], "generation": generation, "checkpoint_keys": file_keys(directory)}


def opt_lm_fixture(out: Path, name: str, seed: int, spec: dict) -> None:
    directory = out / name
    tokenizer = bpe_tokenizer()
    config = OPTConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec["config"])
    config._attn_implementation = "eager"
    prompts = spec["prompts"]

    def attempt(model_seed: int) -> tuple[Refs, float]:
        torch.manual_seed(model_seed)
        model = OPTForCausalLM(config).eval()
        init_weights(model, model_seed)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(directory)
        model = OPTForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        check_tokenizer_file(directory, tok, prompts["batch"])
        single = tok(prompts["single"], return_tensors="pt")
        batch = tok(prompts["batch"], padding=True, return_tensors="pt")
        refs = Refs()
        for tag, enc in (("single", single), ("batch", batch)):
            refs.add(f"input_ids/{tag}", enc["input_ids"], f"tokenized {tag} prompt(s), BOS </s> prepended, "
                     "left-padded")
            refs.add(f"attention_mask/{tag}", enc["attention_mask"], f"attention mask ({tag})")
        store: dict[str, torch.Tensor] = {}
        decoder = model.model.decoder
        handles = hooks({f"layer.{i}": layer for i, layer in enumerate(decoder.layers)}, store)
        with torch.no_grad():
            out_single = model(**single)
            refs.add("logits/single", out_single.logits, "logits for every position of the single prompt")
            store.clear()
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            out_batch = model(**batch, labels=labels)
        remove(handles)
        for i in range(len(decoder.layers)):
            refs.add(f"decoder/layer.{i}/batch", store[f"layer.{i}"], f"decoder layer {i} output (batch)")
        refs.add("logits/batch", out_batch.logits, "logits for the left-padded batch")
        refs.add("labels/batch", labels, "labels: input_ids with pads -> -100")
        refs.add("loss/batch", out_batch.loss.reshape(1), "HF causal-LM loss with labels/batch")
        return refs, lm_generation_refs(refs, model, single, batch, is_t5=False)

    model_seed, refs, margin = first_good_seed(name, directory, seed, attempt)
    refs.save(directory, lm_meta(name, spec, seed, model_seed, config, margin, directory, refs))


def t5_lm_fixture(out: Path, name: str, seed: int, spec: dict) -> None:
    directory = out / name
    tokenizer = unigram_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      **spec["config"])
    config._attn_implementation = "eager"
    prompts = spec["prompts"]

    def attempt(model_seed: int) -> tuple[Refs, float]:
        torch.manual_seed(model_seed)
        model = T5ForConditionalGeneration(config).eval()
        init_weights(model, model_seed)
        if not spec["tied"]:
            give_own_head(model, model_seed + 1)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        GenerationConfig(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(directory)
        if not spec["tied"]:
            untie_t5_head(directory, "", model.lm_head.weight)
        model = T5ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
        if spec["tied"]:
            if not model.config.scale_decoder_outputs:
                raise AssertionError("the T5 v1.0 fixture must rescale its decoder output")
        else:
            check_untied(model)
        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        check_tokenizer_file(directory, tok, prompts["batch"] + prompts["labels"])
        single = tok(prompts["single"], return_tensors="pt")
        batch = tok(prompts["batch"], padding=True, return_tensors="pt")
        targets = tok(prompts["labels"], padding=True, return_tensors="pt")
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        refs = Refs()
        for tag, enc in (("single", single), ("batch", batch)):
            refs.add(f"input_ids/{tag}", enc["input_ids"], f"tokenized {tag} prompt(s), </s> appended, right-padded")
            refs.add(f"attention_mask/{tag}", enc["attention_mask"], f"attention mask ({tag})")
        refs.add("labels/batch", labels, "labels (pads -> -100)")
        store: dict[str, torch.Tensor] = {}
        modules = {f"encoder/block.{i}": b for i, b in enumerate(model.encoder.block)}
        modules.update({f"decoder/block.{i}": b for i, b in enumerate(model.decoder.block)})
        with torch.no_grad():
            enc_single = model.get_encoder()(**single).last_hidden_state
            refs.add("encoder/last_hidden_state/single", enc_single, "encoder output, single prompt")
            handles = hooks(modules, store)
            out_batch = model(**batch, labels=labels)
            remove(handles)
        for key in sorted(store):
            refs.add(f"{key}/batch", store[key], f"{key} output (hidden states) for the batch")
        refs.add("encoder/last_hidden_state/batch", out_batch.encoder_last_hidden_state, "encoder output, batch")
        refs.add("decoder_input_ids/batch", model._shift_right(labels), "labels shifted right (start token 0)")
        refs.add("logits/batch", out_batch.logits, "teacher-forced decoder logits")
        refs.add("loss/batch", out_batch.loss.reshape(1), "HF loss with labels/batch")
        rel = torch.arange(-40, 41)
        nb, md = config.relative_attention_num_buckets, config.relative_attention_max_distance
        refs.add("bucket/relative_position", rel, "relative positions (key - query) for the bucket references")
        refs.add("bucket/bidirectional", T5Attention._relative_position_bucket(rel, True, nb, md),
                 f"encoder buckets (bidirectional, {nb} buckets, max distance {md})")
        refs.add("bucket/causal", T5Attention._relative_position_bucket(rel, False, nb, md),
                 f"decoder buckets (causal, {nb} buckets, max distance {md})")
        return refs, lm_generation_refs(refs, model, single, batch, is_t5=True)

    model_seed, refs, margin = first_good_seed(name, directory, seed, attempt)
    refs.save(directory, lm_meta(name, spec, seed, model_seed, config, margin, directory, refs))

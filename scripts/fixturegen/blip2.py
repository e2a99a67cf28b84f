"""The BLIP-2 fixtures with a language model (OPT or Flan-T5): every stage's references, generation, head variants."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Model,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    GenerationConfig,
    OPTConfig,
    T5Config,
)
from transformers.image_utils import PILImageResampling
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

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
    write_json,
)
from .vocab import bpe_tokenizer, check_tokenizer_file, unigram_tokenizer
from .processor import add_processor_refs, legacy_processor_files, load_image
from .int8 import add_int8_refs


def add_vision_refs(refs: Refs, vision: torch.nn.Module, pixel_values: torch.Tensor, prefix: str,
                    interpolate: bool = False) -> None:
    store: dict[str, torch.Tensor] = {}
    modules = {"embeddings": vision.embeddings}
    for i, layer in enumerate(vision.encoder.layers):
        modules[f"layer.{i}"] = layer
    handles = hooks(modules, store)
    with torch.no_grad():
        out = vision(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
    remove(handles)
    what = "interpolated-position run" if interpolate else "vision tower"
    refs.add(f"{prefix}/embeddings", store["embeddings"], f"{what}: patch + class + position embeddings")
    for i in range(len(vision.encoder.layers)):
        refs.add(f"{prefix}/layer.{i}", store[f"layer.{i}"], f"{what}: output of encoder layer {i}")
    refs.add(f"{prefix}/last_hidden_state", out.last_hidden_state, f"{what}: post_layernorm(encoder output)")
    refs.add(f"{prefix}/pooler_output", out.pooler_output, f"{what}: post_layernorm applied again to the CLS row")


def add_qformer_refs(refs: Refs, qformer: torch.nn.Module, call, prefix: str, what: str):
    store: dict[str, torch.Tensor] = {}
    modules = {"layernorm": qformer.layernorm}
    for i, layer in enumerate(qformer.encoder.layer):
        modules[f"layer.{i}"] = layer
    handles = hooks(modules, store)
    with torch.no_grad():
        out = call()
    remove(handles)
    refs.add(f"{prefix}/layernorm", store["layernorm"], f"{what}: Q-Former input layernorm output")
    for i in range(len(qformer.encoder.layer)):
        cross = qformer.encoder.layer[i].has_cross_attention
        refs.add(f"{prefix}/layer.{i}", store[f"layer.{i}"],
                 f"{what}: Q-Former layer {i} output ({'with' if cross else 'no'} cross-attention)")
    return out


def blip2_lm_fixture(out: Path, name: str, images: dict[str, Path], seed: int, spec: dict) -> None:
    directory = out / name
    directory.mkdir(parents=True)
    is_t5 = spec["lm"] == "t5"
    tokenizer = unigram_tokenizer() if is_t5 else bpe_tokenizer()
    image_processor = BlipImageProcessorPil(
        size={"height": spec["image_size"], "width": spec["image_size"]}, resample=PILImageResampling.BICUBIC
    )
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=spec["num_query_tokens"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(tokenizer)
    if spec.get("vocab_multiple"):
        # Rows past the tokenizer's, as the hub's OPT pads its 50265 tokens (and `<image>`) to 50304.
        vocab = -(-vocab // spec["vocab_multiple"]) * spec["vocab_multiple"]

    vision_config = Blip2VisionConfig(**spec["vision"], image_size=spec["image_size"])
    qformer_config = Blip2QFormerConfig(**spec["qformer"])
    if is_t5:
        text_config = T5Config(vocab_size=vocab, **spec["text"])
    else:
        text_config = OPTConfig(vocab_size=vocab, **spec["text"])
    config = Blip2Config(
        vision_config=vision_config.to_dict(),
        qformer_config=qformer_config.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=spec["num_query_tokens"],
        image_token_index=image_token,
    )
    config._attn_implementation = "eager"

    for attempt in range(20):
        model_seed = seed + 1000 * attempt
        torch.manual_seed(model_seed)
        model = Blip2ForConditionalGeneration(config).eval()
        init_weights(model, model_seed)
        if is_t5:
            give_own_head(model.language_model, model_seed + 1)
        result = try_blip2_lm(model, processor, tokenizer, images, spec, is_t5)
        if result is not None:
            break
    else:
        raise RuntimeError(f"{name}: no seed gave greedy margins >= {MIN_GREEDY_MARGIN}")
    eos_extra, margin = result

    # Final special tokens: OPT stops on one chosen token as the real checkpoints stop on "\n" (50118);
    # T5 keeps `</s>` and adds the chosen token (several eos ids).
    if is_t5:
        eos = [tokenizer.eos_token_id, eos_extra]
        model.config.text_config.eos_token_id = tokenizer.eos_token_id
        gen = GenerationConfig(
            decoder_start_token_id=0, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
        )
    else:
        eos = eos_extra
        model.config.text_config.eos_token_id = eos
        model.config.text_config.bos_token_id = tokenizer.bos_token_id
        model.config.text_config.pad_token_id = tokenizer.pad_token_id
        gen = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
        )
    model.generation_config = gen
    if spec.get("form") == "saved":
        save_as_transformers_does(model, directory, is_t5)
    else:
        model.save_pretrained(directory)
        if is_t5:
            untie_t5_head(directory, "language_model.", model.language_model.lm_head.weight)
    processor.save_pretrained(directory)
    gen.save_pretrained(directory)
    if spec["legacy_processor_files"]:
        legacy_processor_files(directory, processor)

    # Everything below runs on the model reloaded from disk.
    model = Blip2ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
    processor = Blip2Processor.from_pretrained(directory)
    if is_t5:
        check_untied(model.language_model)
    tokenizer = processor.tokenizer
    check_tokenizer_file(directory, tokenizer, spec["prompts"]["batch"] + [spec["prompts"]["single"]])

    refs = Refs()
    add_processor_refs(refs, processor, images)
    stems = spec["images"]
    pixel_values = torch.cat([processor(images=load_image(images[s]), return_tensors="pt")["pixel_values"]
                              for s in stems])
    refs.add("pixel_values", pixel_values, f"processor output for images {stems} (the batch of two)")

    # Vision tower, Q-Former, projection on the batch of two images.
    add_vision_refs(refs, model.vision_model, pixel_values, "vision")
    interp_size = spec["interpolate_size"]
    interp_pixels = processor.image_processor(
        [load_image(images[s]) for s in stems], size={"height": interp_size[0], "width": interp_size[1]},
        return_tensors="pt")["pixel_values"]
    refs.add("vision_interp/pixel_values", interp_pixels,
             f"the two images processed at {interp_size[0]}x{interp_size[1]} (height x width)")
    add_vision_refs(refs, model.vision_model, interp_pixels, "vision_interp", interpolate=True)

    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    queries = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    q_out = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)),
        "qformer", "queries reading the two images")
    refs.add("qformer/last_hidden_state", q_out.last_hidden_state, "Q-Former last_hidden_state")
    refs.add("qformer/pooler_output", q_out.pooler_output, "Q-Former pooler_output (row 0, no dense layer)")
    with torch.no_grad():
        projected = model.language_projection(q_out.last_hidden_state)
    refs.add("language_projection", projected, "language_projection(Q-Former output): the LM soft prompt")

    # Prompts through the processor, then the LM.
    single = processor(images=load_image(images[stems[0]]), text=spec["prompts"]["single"], return_tensors="pt")
    batch = processor(images=[load_image(images[s]) for s in stems], text=spec["prompts"]["batch"],
                      padding=True, return_tensors="pt")
    for tag, enc in (("single", single), ("batch", batch)):
        refs.add(f"input_ids/{tag}", enc["input_ids"], f"processor input_ids for the {tag} prompt(s), "
                 f"{spec['num_query_tokens']} <image> ids prepended, {tokenizer.padding_side}-padded")
        refs.add(f"attention_mask/{tag}", enc["attention_mask"], f"processor attention_mask ({tag})")

    lm_inputs: dict[str, dict] = {}

    def capture_lm(_m, _args, kwargs):
        lm_inputs["last"] = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}

    handle = model.language_model.register_forward_pre_hook(capture_lm, with_kwargs=True)
    if is_t5:
        targets = tokenizer(spec["prompts"]["labels"], padding=True, return_tensors="pt")
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        refs.add("labels/batch", labels, f"T5 labels for {spec['prompts']['labels']} (pads -> -100)")
        with torch.no_grad():
            out_single = model(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                               attention_mask=single["attention_mask"], labels=labels[:1])
        refs.add("labels/single", labels[:1], "T5 labels for the single prompt (row 0 of labels/batch)")
        refs.add("lm/inputs_embeds/single", lm_inputs["last"]["inputs_embeds"],
                 "T5 encoder inputs_embeds after the <image> rows were overwritten by the projected queries")
        refs.add("lm/logits/single", out_single.logits, "teacher-forced decoder logits, labels row 0")
        refs.add("lm/encoder_last_hidden_state/single", out_single.language_model_outputs.encoder_last_hidden_state,
                 "T5 encoder output for the single prompt")
    else:
        with torch.no_grad():
            out_single = model(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                               attention_mask=single["attention_mask"])
        refs.add("lm/inputs_embeds/single", lm_inputs["last"]["inputs_embeds"],
                 "OPT inputs_embeds after the <image> rows were overwritten by the projected queries")
        refs.add("lm/logits/single", out_single.logits, "OPT logits for every position of the single prompt")
        labels = batch["input_ids"].masked_fill(
            (batch["attention_mask"] == 0) | (batch["input_ids"] == image_token), -100)
        refs.add("labels/batch", labels, "OPT labels: input_ids with pads and <image> positions -> -100")

    head_variants = []
    if spec.get("form") == "saved":
        head_variants = head_variant_refs(refs, directory, is_t5, seed + 7, lambda m: m(
            pixel_values=pixel_values[:1], input_ids=single["input_ids"], attention_mask=single["attention_mask"],
            **({"labels": labels[:1]} if is_t5 else {})).logits)

    model.zero_grad()
    out_batch = model(pixel_values=pixel_values, input_ids=batch["input_ids"],
                      attention_mask=batch["attention_mask"], labels=labels)
    handle.remove()
    refs.add("lm/inputs_embeds/batch", lm_inputs["last"]["inputs_embeds"], "LM inputs_embeds for the padded batch")
    refs.add("lm/logits/batch", out_batch.logits,
             "teacher-forced decoder logits (batch)" if is_t5 else "OPT logits for the padded batch")
    if is_t5:
        refs.add("lm/decoder_input_ids/batch", torch.cat(
            [torch.zeros_like(labels[:, :1]), labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0)], 1),
            "labels shifted right with decoder_start_token_id 0 (-100 -> pad 0)")
        refs.add("lm/encoder_last_hidden_state/batch", out_batch.language_model_outputs.encoder_last_hidden_state,
                 "T5 encoder output for the batch")
    refs.add("lm/loss/batch", out_batch.loss.reshape(1), "HF loss with labels/batch (mean over non-ignored tokens)")
    out_batch.loss.backward()
    for pname in spec["grad_params"]:
        param = dict(model.named_parameters())[pname]
        refs.add(f"grad/{pname}", param.grad, f"d loss/batch / d {pname}")
    model.zero_grad()

    # Generation.
    gen_meta = {}
    with torch.no_grad():
        for tag, enc, px in (("single", single, pixel_values[:1]), ("batch", batch, pixel_values)):
            g = model.generate(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                               output_logits=True, return_dict_in_generate=True)
            refs.add(f"gen/greedy/{tag}", g.sequences, "greedy ids as generate() returns them"
                     + ("" if is_t5 else " (prompt ids followed by new ids)"))
            refs.add(f"gen/greedy/{tag}/logits", torch.stack(g.logits),
                     "raw logits of each greedy step with HF's cache [step, batch, vocab]")
            b = model.generate(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=NUM_BEAMS,
                               output_scores=True, return_dict_in_generate=True)
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}", b.sequences, f"{NUM_BEAMS}-beam ids")
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}/scores", b.sequences_scores, "beam sequences_scores")
        b = model.generate(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                           attention_mask=single["attention_mask"], max_new_tokens=MAX_NEW_TOKENS,
                           num_beams=NUM_BEAMS, num_return_sequences=2, output_scores=True,
                           return_dict_in_generate=True)
        refs.add(f"gen/beam{NUM_BEAMS}_return2/single", b.sequences, "3 beams, num_return_sequences 2")
        refs.add(f"gen/beam{NUM_BEAMS}_return2/single/scores", b.sequences_scores, "their sequences_scores")
        if is_t5:
            # HF 5.24 cannot caption without a prompt for T5; LAVIS feeds `</s>`: [<image> x n, </s>].
            ids = torch.tensor([[image_token] * spec["num_query_tokens"] + [tokenizer.eos_token_id]])
            g = model.generate(pixel_values=pixel_values[:1], input_ids=ids, max_new_tokens=MAX_NEW_TOKENS)
            refs.add("gen/greedy/noprompt/input_ids", ids, "caption without prompt: [<image> x n, </s>]")
        else:
            g = model.generate(pixel_values=pixel_values[:1], max_new_tokens=MAX_NEW_TOKENS)
            refs.add("gen/greedy/noprompt/input_ids",
                     torch.tensor([[image_token] * spec["num_query_tokens"] + [tokenizer.bos_token_id]]),
                     "caption without prompt: HF's [<image> x n, bos]")
        refs.add("gen/greedy/noprompt", g, "greedy caption without a prompt, image 0")
    gen_meta = {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": NUM_BEAMS, "eos_token_id": eos,
                "pad_token_id": tokenizer.pad_token_id, "min_greedy_margin": margin,
                "decoded_greedy_batch": tokenizer.batch_decode(refs.tensors["gen/greedy/batch"],
                                                               skip_special_tokens=True)}

    # Blip2Model feature methods, loaded from the same directory.
    base = Blip2Model.from_pretrained(directory, attn_implementation="eager").eval()
    text_only = tokenizer(spec["prompts"]["batch"], padding=True, return_tensors="pt")
    with torch.no_grad():
        f = base.get_image_features(pixel_values=pixel_values)
        refs.add("features/image/last_hidden_state", f.last_hidden_state, "Blip2Model.get_image_features")
        refs.add("features/image/pooler_output", f.pooler_output, "Blip2Model.get_image_features pooler")
        refs.add("features/qformer", base.get_qformer_features(pixel_values=pixel_values),
                 "Blip2Model.get_qformer_features (Q-Former last_hidden_state)")
        refs.add("features/text/input_ids", text_only["input_ids"], "text-only tokenization of the batch prompts")
        refs.add("features/text/attention_mask", text_only["attention_mask"], "its attention mask")
        refs.add("features/text", base.get_text_features(
            input_ids=text_only["input_ids"], attention_mask=text_only["attention_mask"]).last_hidden_state,
            "Blip2Model.get_text_features: " + ("T5 encoder output" if is_t5 else "OPT decoder output"))

    int8_meta = None
    if spec.get("int8_group"):
        int8_meta = add_int8_refs(refs, model, pixel_values, single, is_t5, spec["int8_group"],
                                  labels if is_t5 else None)

    meta = {
        "format_version": FORMAT_VERSION,
        "fixture": name,
        "what": f"Blip2ForConditionalGeneration with {'Flan-T5-style T5' if is_t5 else 'OPT'}",
        "versions": versions(),
        "seed": seed,
        "model_seed": model_seed,
        "attn_implementation": "eager",
        "dtype": "float32",
        "images": {s: images[s].name for s in stems},
        "prompts": spec["prompts"],
        "generation": gen_meta,
        "image_token_index": image_token,
        "checkpoint_keys": file_keys(directory),
    }
    if int8_meta is not None:
        meta["int8"] = int8_meta
    if spec.get("form") == "saved":
        meta["form"] = ("transformers 5.24 save_pretrained output, unedited"
                        + (" (of the model loaded from the hub's form)" if is_t5 else ""))
        meta["head_variants"] = head_variants
    refs.save(directory, meta)


def save_as_transformers_does(model, directory: Path, is_t5: bool) -> None:
    """Save `model` as a user of transformers 5.24 would end up with it: `save_pretrained`, unedited.

    For T5 that is a Flan-T5 converted or fine-tuned with transformers 5.x: the hub's form (own `lm_head`,
    `tie_word_embeddings: false`) is loaded with `from_pretrained`, which unties the stored head, and saved again.
    transformers then writes `tie_word_embeddings: true` with `scale_decoder_outputs: false` and keeps
    `lm_head.weight`; the asserts below pin that form.
    """
    if not is_t5:
        model.save_pretrained(directory)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        untie_t5_head(Path(tmp), "language_model.", model.language_model.lm_head.weight)
        converted = Blip2ForConditionalGeneration.from_pretrained(tmp, attn_implementation="eager")
        converted.generation_config = model.generation_config
        converted.save_pretrained(directory)
    text = json.loads((directory / "config.json").read_text())["text_config"]
    stored = load_file(str(directory / "model.safetensors"))
    if (text.get("tie_word_embeddings") is not True or text.get("scale_decoder_outputs") is not False
            or "language_model.lm_head.weight" not in stored
            or torch.equal(stored["language_model.lm_head.weight"], stored["language_model.shared.weight"])):
        raise AssertionError("transformers no longer saves Flan-T5 in the form this fixture is about")


def head_variant_refs(refs: Refs, directory: Path, is_t5: bool, seed: int, logits_of) -> list[dict]:
    """Logits of the saved model with its config's head flags and its stored `lm_head.weight` varied as
    transformers writes or reads them: `tie_word_embeddings` absent/true/false, for T5 also `scale_decoder_outputs`
    absent/true/false, each with the head stored (values of its own) or absent. OPT with `tie_word_embeddings:
    false` and no stored head is left out: transformers initialises a random head there (blip2 refuses it)."""
    prefix = "language_model."
    head_key = prefix + "lm_head.weight"
    source_key = prefix + ("shared.weight" if is_t5 else "model.decoder.embed_tokens.weight")
    tensors = load_file(str(directory / "model.safetensors"))
    head = tensors.get(head_key)
    if head is None:
        g = torch.Generator().manual_seed(seed)
        shape = tensors[source_key].shape
        head = torch.randn(shape, generator=g) / np.sqrt(shape[1])
    refs.add("head/lm_head.weight", head, f"the {head_key} the head variants store (differs from {source_key})")
    variants = []
    for tie in ("absent", True, False):
        for scale in (("absent", True, False) if is_t5 else ("absent",)):
            for stored in (True, False):
                if not is_t5 and tie is False and not stored:
                    continue
                name = f"tie_{str(tie).lower()}/scale_{str(scale).lower()}/head_{'stored' if stored else 'absent'}"
                with tempfile.TemporaryDirectory() as tmp:
                    tmp = Path(tmp)
                    config = json.loads((directory / "config.json").read_text())
                    text = config["text_config"]
                    for key, value in (("tie_word_embeddings", tie), ("scale_decoder_outputs", scale)):
                        text.pop(key, None)
                        if value != "absent":
                            text[key] = value
                    write_json(tmp / "config.json", config)
                    variant = {k: v for k, v in tensors.items() if k != head_key}
                    if stored:
                        variant[head_key] = head.clone()
                    save_file(variant, str(tmp / "model.safetensors"), metadata={"format": "pt"})
                    m = Blip2ForConditionalGeneration.from_pretrained(tmp, attn_implementation="eager").eval()
                    lm = m.language_model
                    uses_stored = not (lm.lm_head.weight is lm.get_input_embeddings().weight)
                    if uses_stored != stored:
                        raise AssertionError(f"{name}: transformers no longer decides the head as documented")
                    scaled = bool(getattr(lm.config, "scale_decoder_outputs", False))
                    with torch.no_grad():
                        logits = logits_of(m)
                refs.add(f"head/{name}/logits", logits,
                         f"lm/logits/single with text_config tie_word_embeddings {tie}"
                         + (f", scale_decoder_outputs {scale}" if is_t5 else "")
                         + f", lm_head.weight {'= head/lm_head.weight' if stored else 'absent'}; transformers used "
                         f"{'the stored head' if stored else source_key}" + (f", scaled {scaled}" if is_t5 else ""))
                variants.append({"name": name, "tie_word_embeddings": tie, "scale_decoder_outputs": scale,
                                 "head_stored": stored, "embeddings_stored": True, "uses_stored_head": uses_stored,
                                 "scales_decoder_outputs": scaled if is_t5 else None})
    # The head stored without the input embeddings: transformers ties the other way round (`tie_weights` swaps
    # source and target), so the embeddings are the stored head.
    name = "embeddings_absent/head_stored"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy(directory / "config.json", tmp / "config.json")
        variant = {k: v for k, v in tensors.items() if k not in (head_key, source_key)}
        variant[head_key] = head.clone()
        save_file(variant, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        m = Blip2ForConditionalGeneration.from_pretrained(tmp, attn_implementation="eager").eval()
        lm = m.language_model
        if not torch.equal(lm.get_input_embeddings().weight, head):
            raise AssertionError(f"{name}: transformers no longer takes the embeddings from the stored head")
        with torch.no_grad():
            logits = logits_of(m)
    refs.add(f"head/{name}/logits", logits, f"lm/logits/single with {source_key} absent and lm_head.weight = "
             "head/lm_head.weight: transformers uses the stored head as the embeddings too")
    variants.append({"name": name, "tie_word_embeddings": "as saved", "scale_decoder_outputs": "as saved",
                     "head_stored": True, "embeddings_stored": False, "uses_stored_head": True,
                     "scales_decoder_outputs": bool(getattr(lm.config, "scale_decoder_outputs", False))
                     if is_t5 else None})
    return variants


def try_blip2_lm(model, processor, tokenizer, images, spec, is_t5):
    """Pick an extra eos token so that in the greedy batch row 0 stops early and row 1 runs to the end; reject
    seeds whose greedy margins are too small. Returns (eos_token, margin) or None."""
    stems = spec["images"]
    batch = processor(images=[load_image(images[s]) for s in stems], text=spec["prompts"]["batch"],
                      padding=True, return_tensors="pt")
    single = processor(images=load_image(images[stems[0]]), text=spec["prompts"]["single"], return_tensors="pt")
    model.generation_config = GenerationConfig(
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=0 if is_t5 else None,
        bos_token_id=None if is_t5 else tokenizer.bos_token_id)
    margins = []
    with torch.no_grad():
        for enc in (single, batch):
            g = model.generate(pixel_values=enc["pixel_values"], input_ids=enc["input_ids"],
                               attention_mask=enc["attention_mask"], max_new_tokens=MAX_NEW_TOKENS,
                               do_sample=False, output_logits=True, return_dict_in_generate=True)
            margins.append(margin_ok(list(g.logits)))
        new = g.sequences if is_t5 else g.sequences[:, batch["input_ids"].shape[1]:]
    margin = min(margins)
    if margin < MIN_GREEDY_MARGIN:
        return None
    specials = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids("<image>"), 0}
    row0, row1 = new[0].tolist(), new[1].tolist()
    start = 1 if is_t5 else 0  # T5 sequences start with decoder_start_token_id
    for step in range(start + 2, start + 5):
        t = row0[step]
        if t not in specials and t not in row0[:step] and t not in row1:
            return t, margin
    return None

"""The image-text retrieval (ITM/ITC) fixture."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForImageTextRetrieval,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2TextModelWithProjection,
    Blip2VisionConfig,
    Blip2VisionModelWithProjection,
)
from transformers.image_utils import PILImageResampling
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

from .common import FORMAT_VERSION, Refs, file_keys, init_weights, versions
from .vocab import check_tokenizer_file, wordpiece_tokenizer
from .processor import add_processor_refs, legacy_processor_files, load_image
from .blip2 import add_qformer_refs, add_vision_refs


# ----------------------------------------------------------------------------------------------------------------
# Retrieval (tiny-itm)
# ----------------------------------------------------------------------------------------------------------------


def itm_fixture(out: Path, name: str, images: dict[str, Path], seed: int, spec: dict) -> None:
    directory = out / name
    directory.mkdir(parents=True)
    tokenizer = wordpiece_tokenizer()
    image_processor = BlipImageProcessorPil(
        size={"height": spec["image_size"], "width": spec["image_size"]}, resample=PILImageResampling.BICUBIC)
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=spec["num_query_tokens"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    qformer_vocab = tokenizer.convert_tokens_to_ids("[DEC]") + 1  # `<image>` lies outside, as in the hub files
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**spec["vision"], image_size=spec["image_size"]).to_dict(),
        qformer_config=Blip2QFormerConfig(vocab_size=qformer_vocab, use_qformer_text_input=True,
                                          **spec["qformer"]).to_dict(),
        num_query_tokens=spec["num_query_tokens"],
        image_text_hidden_size=spec["image_text_hidden_size"],
        image_token_index=image_token,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    init_weights(model, seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    if spec["legacy_processor_files"]:
        legacy_processor_files(directory, processor)

    model = Blip2ForImageTextRetrieval.from_pretrained(directory, attn_implementation="eager").eval()
    processor = Blip2Processor.from_pretrained(directory)
    tokenizer = processor.tokenizer
    texts = spec["texts"]
    check_tokenizer_file(directory, tokenizer, texts)

    refs = Refs()
    add_processor_refs(refs, processor, images)
    stems = spec["images"]
    enc = processor(images=[load_image(images[s]) for s in stems], text=texts, padding=True, return_tensors="pt")
    pixel_values = enc["pixel_values"]
    refs.add("pixel_values", pixel_values, f"processor output for images {stems}")
    refs.add("input_ids", enc["input_ids"], "processor input_ids: <image> x n, then [CLS] text [SEP], right-padded")
    refs.add("attention_mask", enc["attention_mask"], "processor attention_mask")
    add_vision_refs(refs, model.vision_model, pixel_values, "vision")
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    n = spec["num_query_tokens"]
    text_ids, text_mask = enc["input_ids"][:, n:], enc["attention_mask"][:, n:]
    refs.add("text/input_ids", text_ids, "the text part of input_ids (what the Q-Former text tower embeds)")
    refs.add("text/attention_mask", text_mask, "the text part of attention_mask")

    # ITM path: [queries; text] with cross-attention for the query rows.
    queries = model.query_tokens.expand(pixel_values.shape[0], -1, -1)
    with torch.no_grad():
        embeds = model.embeddings(input_ids=text_ids, query_embeds=queries)
    refs.add("itm/embeddings", embeds, "[query_tokens; word + position embeddings of the text]")
    itm_out = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=embeds, query_length=n, attention_mask=enc["attention_mask"],
                              encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)),
        "itm/qformer", "ITM path: queries + text reading the images")
    refs.add("itm/qformer/last_hidden_state", itm_out.last_hidden_state, "ITM path Q-Former last_hidden_state")
    refs.add("itm/qformer/pooler_output", itm_out.pooler_output, "ITM path Q-Former pooler_output")
    with torch.no_grad():
        itm = model(pixel_values=pixel_values, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    use_image_text_matching_head=True)
    refs.add("itm/logits", itm.logits_per_image, "ITM logits: itm_head on query rows, mean over queries [B, 2]")

    # ITC path: image side (queries only) and text side (text only, query_length 0).
    q_img = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)),
        "itc/image_qformer", "ITC image side: queries reading the images")
    refs.add("itc/image_qformer/last_hidden_state", q_img.last_hidden_state, "ITC image-side Q-Former output")
    with torch.no_grad():
        text_embeds_in = model.embeddings(input_ids=text_ids)
    refs.add("itc/text_embeddings", text_embeds_in, "text word + position embeddings (no LayerNorm of their own)")
    q_txt = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=text_embeds_in, query_length=0, attention_mask=text_mask),
        "itc/text_qformer", "ITC text side: text alone")
    refs.add("itc/text_qformer/last_hidden_state", q_txt.last_hidden_state, "ITC text-side Q-Former output")
    refs.add("itc/text_qformer/pooler_output", q_txt.pooler_output, "ITC text-side pooler (row 0)")
    with torch.no_grad():
        itc = model(pixel_values=pixel_values, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    use_image_text_matching_head=False)
    refs.add("itc/image_embeds", itc.image_embeds, "normalize(vision_projection(queries)) [B, n, D]")
    refs.add("itc/text_embeds", itc.text_embeds, "normalize(text_projection(text CLS row)) [B, D]")
    refs.add("itc/logits_per_image", itc.logits_per_image, "ITC: max over queries of the cosine [images, texts]")

    text_model = Blip2TextModelWithProjection.from_pretrained(directory, attn_implementation="eager").eval()
    vision_model = Blip2VisionModelWithProjection.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        t = text_model(input_ids=text_ids, attention_mask=text_mask)
        v = vision_model(pixel_values=pixel_values)
    refs.add("text_with_projection/text_embeds", t.text_embeds,
             "Blip2TextModelWithProjection: normalize(text_projection(every text row)) [B, L, D]")
    refs.add("vision_with_projection/image_embeds", v.image_embeds,
             "Blip2VisionModelWithProjection: normalize(vision_projection(queries)) [B, n, D]")

    meta = {
        "format_version": FORMAT_VERSION,
        "fixture": name,
        "what": "Blip2ForImageTextRetrieval (Q-Former text tower, use_qformer_text_input)",
        "versions": versions(),
        "seed": seed,
        "attn_implementation": "eager",
        "dtype": "float32",
        "images": {s: images[s].name for s in stems},
        "texts": texts,
        "image_token_index": image_token,
        "checkpoint_keys": file_keys(directory),
    }
    refs.save(directory, meta)

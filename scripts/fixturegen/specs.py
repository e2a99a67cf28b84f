"""The fixtures' specifications: sizes and options of each tiny model."""

from __future__ import annotations


# ----------------------------------------------------------------------------------------------------------------
# Fixture specs
# ----------------------------------------------------------------------------------------------------------------

TINY_OPT = {
    "lm": "opt",
    "legacy_processor_files": True,
    "image_size": 30,  # 30 is not a multiple of the patch (4): the last two pixel rows/columns are dropped
    "num_query_tokens": 5,
    "vision": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3, patch_size=4),
    "qformer": dict(hidden_size=36, intermediate_size=52, num_hidden_layers=3, num_attention_heads=3,
                    cross_attention_frequency=2, max_position_embeddings=32),
    "text": dict(hidden_size=40, ffn_dim=56, num_hidden_layers=2, num_attention_heads=5, max_position_embeddings=64,
                 word_embed_proj_dim=40, do_layer_norm_before=True),
    "images": ["rgb_37x29", "rgba_31x23"],
    "interpolate_size": (38, 26),
    "prompts": {"single": "Question: what is on the table? Answer:",
                "batch": ["a photo of", "Question: how many cats are there? Answer:"]},
    "grad_params": ["query_tokens", "qformer.encoder.layer.0.crossattention.attention.query.weight",
                    "language_projection.weight", "vision_model.embeddings.patch_embedding.weight"],
}

TINY_T5 = {
    "lm": "t5",
    "legacy_processor_files": False,  # transformers 5.x layout: everything in processor_config.json
    "image_size": 26,  # patch 6: 4x4 patches, two pixels dropped
    "num_query_tokens": 6,
    "vision": dict(hidden_size=20, intermediate_size=36, num_hidden_layers=2, num_attention_heads=5, patch_size=6,
                   layer_norm_eps=1e-5),
    "qformer": dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                    cross_attention_frequency=1, max_position_embeddings=32),
    # Flan-T5 as BLIP-2 ships it: gated FFN with exact gelu, untied lm_head; encoder and decoder depths differ
    # (decoder shallower: transformers 5.24 sizes the generation cache by `num_layers`, so a deeper decoder
    # crashes generate()); few relative buckets so that short sequences reach the log buckets and the clamp.
    "text": dict(d_model=32, d_kv=8, d_ff=44, num_layers=3, num_decoder_layers=2, num_heads=3,
                 relative_attention_num_buckets=8, relative_attention_max_distance=12,
                 feed_forward_proj="gated-gelu", dense_act_fn="gelu", tie_word_embeddings=False,
                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1),
    "images": ["photo_45x33", "gray_19x41"],
    "interpolate_size": (32, 20),
    "prompts": {"single": "Question: what color is the sky? Answer:",
                "batch": ["describe the image", "Question: where is the dog? Answer:"],
                "labels": ["a small red house with a white door near the sea", "on the grass"]},
    # int8 (issue 17): `o` and `wo` (32 outputs) are quantized; q/k/v (24), wi_0/wi_1 (44) and the head stay float.
    "int8_group": 64,
    "grad_params": ["query_tokens", "qformer.encoder.layer.0.crossattention.attention.query.weight",
                    "language_projection.weight", "vision_model.embeddings.patch_embedding.weight"],
}

# The same models as transformers 5.24's `save_pretrained` writes them, unedited (other seeds): T5 converted from
# the hub's form and saved again (`tie_word_embeddings: true`, `scale_decoder_outputs: false`, its own stored
# `lm_head.weight`), OPT saved fresh (tied head absent); both in the 5.x processor layout.
TINY_T5_SAVED = dict(TINY_T5, form="saved", int8_group=None)
# int8 (issue 17): an OPT whose decoder sizes are multiples of 16, so that every decoder Linear is quantized
# (q/k/v/out and fc2 with 32 outputs per scale, fc1 with 64), and whose vocabulary is padded to a multiple of 16
# (331 tokens, 336 rows) so that the tied head is quantized too (48 outputs per scale).
TINY_OPT_Q8 = {
    **TINY_OPT,
    "vocab_multiple": 16,
    "text": dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                 word_embed_proj_dim=32, do_layer_norm_before=True),
    "int8_group": 64,
}

TINY_OPT_SAVED = dict(TINY_OPT, form="saved", legacy_processor_files=False)

TINY_ITM = {
    "legacy_processor_files": True,
    "image_size": 24,  # patch 5: 4x4 patches, four pixels dropped
    "num_query_tokens": 4,
    "image_text_hidden_size": 12,
    "vision": dict(hidden_size=16, intermediate_size=28, num_hidden_layers=2, num_attention_heads=2, patch_size=5),
    "qformer": dict(hidden_size=30, intermediate_size=44, num_hidden_layers=3, num_attention_heads=5,
                    cross_attention_frequency=2, max_position_embeddings=24),
    "images": ["palette_25x19", "gray_alpha_21x21"],
    "texts": ["a photo of a cat sitting on a red couch", "two dogs"],
}

TINY_OPT_LM = {
    "what": "OPTForCausalLM, pre-LN",
    "config": dict(hidden_size=24, ffn_dim=40, num_hidden_layers=2, num_attention_heads=3, max_position_embeddings=40,
                   word_embed_proj_dim=24, do_layer_norm_before=True),
    "prompts": {"single": "a photo of a cat", "batch": ["two dogs", "a bowl of fruit on a wooden table"]},
}

TINY_OPT_LM_350M = {
    "what": "OPTForCausalLM like opt-350m: post-LN (do_layer_norm_before false, no final layer norm), "
            "word_embed_proj_dim != hidden_size (project_in / project_out)",
    "config": dict(hidden_size=24, ffn_dim=40, num_hidden_layers=2, num_attention_heads=3, max_position_embeddings=40,
                   word_embed_proj_dim=16, do_layer_norm_before=False),
    "prompts": {"single": "a photo of a cat", "batch": ["two dogs", "a bowl of fruit on a wooden table"]},
}

TINY_T5_LM = {
    "what": "T5ForConditionalGeneration like Flan-T5: gated-gelu (gelu_new), untied lm_head",
    "tied": False,
    "config": dict(d_model=32, d_kv=8, d_ff=44, num_layers=3, num_decoder_layers=2, num_heads=3,
                   relative_attention_num_buckets=8, relative_attention_max_distance=12,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False),
    "prompts": {"single": "describe the image in detail",
                "batch": ["what is on the table", "a man riding a bike down the street next to a stone wall"],
                "labels": ["a bowl of fruit on a wooden table near the sea", "a man"]},
}

TINY_T5_LM_V1 = {
    "what": "T5ForConditionalGeneration like T5 v1.0: relu, non-gated, lm_head tied to shared with d_model^-0.5",
    "tied": True,
    "config": dict(d_model=32, d_kv=8, d_ff=44, num_layers=2, num_decoder_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=12,
                   feed_forward_proj="relu", tie_word_embeddings=True),
    "prompts": TINY_T5_LM["prompts"],
}

"""The parameter key sets of the hub checkpoints, built on the meta device from their documented configs."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    OPTConfig,
    T5Config,
)

from .common import FORMAT_VERSION, versions, write_json


# ----------------------------------------------------------------------------------------------------------------
# Real checkpoints' key/shape sets, from the architectures built on the meta device (no weights)
# ----------------------------------------------------------------------------------------------------------------


def real_key_sets(out: Path) -> None:
    directory = out / "real-keys"
    directory.mkdir(parents=True)
    qformer = Blip2QFormerConfig()
    cases = {
        "blip2-opt-2.7b": (Blip2ForConditionalGeneration, dict(
            text_config=OPTConfig(vocab_size=50304, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240,
                                  num_attention_heads=32, word_embed_proj_dim=2560,
                                  max_position_embeddings=2048).to_dict(),
            image_token_index=50265)),
        "blip2-opt-6.7b": (Blip2ForConditionalGeneration, dict(
            text_config=OPTConfig(vocab_size=50304, hidden_size=4096, num_hidden_layers=32, ffn_dim=16384,
                                  num_attention_heads=32, word_embed_proj_dim=4096,
                                  max_position_embeddings=2048).to_dict(),
            image_token_index=50265)),
        "blip2-flan-t5-xl": (Blip2ForConditionalGeneration, dict(
            text_config=T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                                 num_decoder_layers=24, num_heads=32, feed_forward_proj="gated-gelu",
                                 dense_act_fn="gelu", tie_word_embeddings=False).to_dict(),
            image_token_index=32100)),
        "blip2-itm-vit-g": (Blip2ForImageTextRetrieval, dict(
            qformer_config=Blip2QFormerConfig(vocab_size=30523, use_qformer_text_input=True).to_dict())),
    }
    for name, (cls, kwargs) in cases.items():
        kwargs.setdefault("qformer_config", qformer.to_dict())
        config = Blip2Config(vision_config=Blip2VisionConfig().to_dict(), num_query_tokens=32, **kwargs)
        with torch.device("meta"):
            model = cls(config)
        state = model.state_dict()
        tied = {}
        for target, source in sorted(getattr(model, "all_tied_weights_keys", {}).items()):
            tied[target] = source
        if name.startswith("blip2-flan"):
            # transformers 5.24 declares T5's head tied to `shared`, but Flan-T5 files hold their own lm_head
            # (tie_word_embeddings false); only the encoder/decoder embed_tokens may be absent.
            tied.pop("language_model.lm_head.weight", None)
        write_json(directory / f"{name}.json", {
            "format_version": FORMAT_VERSION,
            "what": f"{cls.__name__} at the hub checkpoint's sizes, built on the meta device from the documented "
                    "hyperparameters (not downloaded); keys in `tied` may be absent from the hub files",
            "versions": versions(),
            "keys": {k: list(v.shape) for k, v in sorted(state.items())},
            "tied": tied,
        })

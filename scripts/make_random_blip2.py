"""Writes a BLIP-2 model directory at a hub checkpoint's sizes with random weights, for memory and speed
measurements of the big checkpoints without downloading them (docs/performance.md). Nothing it writes is committed.

The sizes are those of the hub configs: ViT-g (1408 wide, 39 layers) at 224 px, the BERT-base Q-Former with 32
queries, and the language model named by --lm. Weights are N(0, 0.02) in --dtype, written in safetensors shards of
at most --shard-gb with a `model.safetensors.index.json`, as the hub stores them, one tensor in memory at a time.
The tokenizer, processor and special token ids come from the tiny test fixture (fixtures/tiny-opt or tiny-t5):
they are only there so that `blip2 caption` runs; the generated text is meaningless.

    python scripts/make_random_blip2.py --lm opt-6.7b --out /tmp/blip2-opt-6.7b-random
"""

import argparse
import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Blip2Config, Blip2ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent

LMS = {
    "opt-2.7b": ("tiny-opt", dict(model_type="opt", hidden_size=2560, ffn_dim=10240, num_hidden_layers=32,
                                  num_attention_heads=32, word_embed_proj_dim=2560, vocab_size=50304,
                                  max_position_embeddings=2048)),
    "opt-6.7b": ("tiny-opt", dict(model_type="opt", hidden_size=4096, ffn_dim=16384, num_hidden_layers=32,
                                  num_attention_heads=32, word_embed_proj_dim=4096, vocab_size=50304,
                                  max_position_embeddings=2048)),
    "flan-t5-xl": ("tiny-t5", dict(model_type="t5", d_model=2048, d_kv=64, d_ff=5120, num_layers=24,
                                   num_decoder_layers=24, num_heads=32, vocab_size=32128,
                                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    "flan-t5-xxl": ("tiny-t5", dict(model_type="t5", d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                    num_decoder_layers=24, num_heads=64, vocab_size=32128,
                                    feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
}

DTYPES = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lm", choices=sorted(LMS), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="f16")
    parser.add_argument("--shard-gb", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    fixture_name, text = LMS[args.lm]
    fixture = ROOT / "fixtures" / fixture_name
    tiny = json.loads((fixture / "config.json").read_text())
    tiny_text = tiny["text_config"]
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"):
        if key in tiny_text:
            text[key] = tiny_text[key]
    config = Blip2Config(
        vision_config=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39, num_attention_heads=16,
                           image_size=224, patch_size=14, qkv_bias=True),
        qformer_config=dict(encoder_hidden_size=1408),
        text_config=text,
        num_query_tokens=32,
        image_token_index=tiny.get("image_token_index"),
    )
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    del model
    # Tied copies are not stored (as save_pretrained does): OPT's head, T5's per-stack embeddings.
    if text["model_type"] == "opt":
        shapes.pop("language_model.lm_head.weight", None)
    else:
        for key in [k for k in shapes if k.endswith("embed_tokens.weight")]:
            shapes.pop(key)

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    dtype = DTYPES[args.dtype]
    generator = torch.Generator().manual_seed(args.seed)
    limit = int(args.shard_gb * 1e9)
    # Only each shard's keys and sizes stay in memory once it is written (Flan-T5-XXL is 24 GB of bf16).
    shards, current, size = [], {}, 0
    for key in sorted(shapes):
        tensor = torch.empty(shapes[key], dtype=torch.float32).normal_(0.0, 0.02, generator=generator).to(dtype)
        if key.endswith("norm.weight") or key.endswith("layer_norm.weight") or key.endswith("layernorm.weight"):
            tensor.fill_(1.0)
        bytes_ = tensor.numel() * tensor.element_size()
        if current and size + bytes_ > limit:
            shards.append({k: v.numel() * v.element_size() for k, v in current.items()})
            name = f"model-{len(shards):05d}.safetensors"
            save_file(current, str(out / name), metadata={"format": "pt"})
            current, size = {}, 0
        current[key] = tensor
        size += bytes_
    shards.append({k: v.numel() * v.element_size() for k, v in current.items()})
    save_file(current, str(out / f"model-{len(shards):05d}.safetensors"), metadata={"format": "pt"})
    del current
    total = len(shards)
    weight_map, total_size = {}, 0
    for i in range(1, total + 1):
        old = out / f"model-{i:05d}.safetensors"
        new = out / f"model-{i:05d}-of-{total:05d}.safetensors"
        old.rename(new)
    for i, shard in enumerate(shards, 1):
        for key, bytes_ in shard.items():
            weight_map[key] = f"model-{i:05d}-of-{total:05d}.safetensors"
            total_size += bytes_
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total_size}, "weight_map": weight_map}, indent=1))
    (out / "config.json").write_text(config.to_json_string())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "processor_config.json",
                 "preprocessor_config.json", "special_tokens_map.json"):
        if (fixture / name).exists():
            shutil.copy(fixture / name, out / name)
    # The tiny fixture's processor resizes to its own image size; the ViT-g wants 224 px.
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = out / name
        if path.exists():
            value = json.loads(path.read_text())
            target = value.get("image_processor", value)
            if "size" in target:
                target["size"] = {"height": 224, "width": 224}
            if "num_query_tokens" in value:
                value["num_query_tokens"] = 32
            path.write_text(json.dumps(value, indent=2))
    print(f"wrote {out}: {total} shard(s), {total_size / 1e9:.1f} GB of {args.dtype}")


if __name__ == "__main__":
    main()

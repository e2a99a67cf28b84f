"""Times transformers' Blip2ForConditionalGeneration.generate on the config blip2's caption bench uses
(benches/caption.rs): BLIP-2 OPT-2.7b sizes (ViT-g 224 px, BERT-base Q-Former, 32 queries, OPT-2.7b) with random
weights, one image, the no-prompt input [<image> x 32, </s>], exactly 20 new tokens
(min_new_tokens = max_new_tokens = 20), greedy and 5 beams; in f32, bf16 (transformers' half-precision loading: the
Q-Former kept in f32 by `_keep_in_fp32_modules`, as blip2's `Precision::half` does), and int8 (torch's dynamic
quantization of the language model's nn.Linear layers; the rest stays in f32, since dynamically quantized layers
take f32 activations, where blip2's `Precision::INT8` runs the vision tower in bf16).

Run by `cargo xtask bench caption` right after the Rust bench, with the fixture venv. Prints one JSON object:
{"<dtype>/<case>": {"median_s": .., "min_s": .., "runs": n}, "meta": {...}}.
"""

import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

NEW_TOKENS = 20
IMAGE_TOKEN = 50265


def timed(fn, runs: int) -> dict:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    layers = os.environ.get("BLIP2_BENCH_LAYERS")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dtypes", default=os.environ.get("BLIP2_BENCH_DTYPES", "f32,bf16,int8"))
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    vision = Blip2VisionConfig(hidden_size=1408, intermediate_size=6144, num_hidden_layers=int(layers or 39),
                               num_attention_heads=16, image_size=224, patch_size=14, qkv_bias=True)
    qformer = Blip2QFormerConfig(encoder_hidden_size=1408)
    text = OPTConfig(vocab_size=50304, hidden_size=2560, num_hidden_layers=int(layers or 32), num_attention_heads=32,
                     ffn_dim=10240, eos_token_id=50118, word_embed_proj_dim=2560)
    config = Blip2Config(vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
                         num_query_tokens=32, image_token_index=IMAGE_TOKEN)
    n = 224 * 224 * 3
    pixels = (torch.arange(n) % 251).float().div(125.0).sub(1.0).reshape(1, 3, 224, 224)
    ids = torch.tensor([[IMAGE_TOKEN] * 32 + [2]])
    results = {}
    for dtype in args.dtypes.split(","):
        with torch.device("meta"):
            model = Blip2ForConditionalGeneration(config)
        model = model.to_empty(device="cpu").float().eval()
        for p in model.parameters():  # random weights of a sane scale (no init cost measured)
            torch.nn.init.normal_(p, std=0.02)
        if dtype == "bf16":
            model.vision_model.to(torch.bfloat16)
            model.language_projection.to(torch.bfloat16)
            model.language_model.to(torch.bfloat16)
        elif dtype == "int8":
            # In place: a copy would hold the f32 language model twice (26 GB, past a 24 GiB machine).
            model.language_model = torch.ao.quantization.quantize_dynamic(
                model.language_model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)
        px = pixels.to(torch.bfloat16) if dtype == "bf16" else pixels
        with torch.inference_mode():
            for case, beams in (("greedy20", 1), ("beam5_20", 5)):
                def run():
                    return model.generate(pixel_values=px, input_ids=ids, attention_mask=torch.ones_like(ids),
                                          max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, num_beams=beams,
                                          do_sample=False)

                out = run()
                assert out.shape[1] == ids.shape[1] + NEW_TOKENS, out.shape
                results[f"{dtype}/{case}"] = timed(run, args.runs)
        del model
    results["meta"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "attn_implementation": config._attn_implementation,
                       "layers": layers or "full"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

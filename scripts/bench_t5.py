"""Times transformers' T5ForConditionalGeneration on the config blip2's T5 bench uses (benches/t5.rs): Flan-T5-XL
as BLIP-2 uses it, random weights, batch 1, one decoder step after 8 decoded tokens over a 32-token encoder output
whose cross-attention cache is filled, logits for the last position.

Run by `cargo xtask bench t5` right after the Rust bench, with the fixture venv. Prints one JSON object:
{"<dtype>/decode": {"median_s": .., "min_s": .., "runs": n}, "meta": {...}}.
"""

import argparse
import copy
import json
import os
import statistics
import time

import torch
import transformers
from transformers import T5Config, T5ForConditionalGeneration

SOURCE, DECODED = 32, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=int(os.environ.get("BLIP2_BENCH_LAYERS", 24)))
    parser.add_argument("--dtypes", default=os.environ.get("BLIP2_BENCH_DTYPES", "f32,bf16,int8"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = T5Config(vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=args.layers,
                      num_decoder_layers=args.layers, num_heads=32, feed_forward_proj="gated-gelu",
                      dense_act_fn="gelu", tie_word_embeddings=False)
    config._attn_implementation = "eager"  # T5's position bias: transformers uses eager attention for it
    # int8: torch's dynamic quantization of every nn.Linear (qint8 weights), the peer of blip2's int8 mode.
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
    source = torch.tensor([[3 + (i * 7919) % 32000 for i in range(SOURCE)]])
    prefix = torch.tensor([[i * 11 for i in range(DECODED)]])
    token = torch.tensor([[42]])
    results = {}
    for name in args.dtypes.split(","):
        with torch.device("meta"):
            model = T5ForConditionalGeneration(config)
        model = model.to_empty(device="cpu").to(dtypes[name]).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.02)
        if name == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            encoded = model.get_encoder()(input_ids=source).last_hidden_state
            out = model(encoder_outputs=(encoded,), decoder_input_ids=prefix, use_cache=True)
            cache = out.past_key_values

            def step():
                return model(encoder_outputs=(encoded,), decoder_input_ids=token,
                             past_key_values=copy.deepcopy(cache), use_cache=True, logits_to_keep=1)

            step()
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                step()
                times.append(time.perf_counter() - start)
        results[f"{name}/decode"] = {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}
        del model
    results["meta"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "layers": args.layers,
                       "attn_implementation": config._attn_implementation,
                       "note": "decode includes a deepcopy of the cache"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

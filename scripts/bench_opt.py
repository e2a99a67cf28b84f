"""Times transformers' OPTForCausalLM on the config blip2's OPT bench uses (benches/opt.rs): BLIP-2's OPT-2.7b
sizes with random weights, batch 1, a 32-token prefill into an empty cache and one decode step after it, logits for
the last position only (as generate() computes them). `int8` is torch's dynamic quantization of every nn.Linear
(`torch.ao.quantization.quantize_dynamic`, qint8 weights, int8 activations quantized per call), the peer of
blip2's int8 mode. The meta records the machine's read bandwidth (a sum over 1 GiB) for the bandwidth bound.

Run by `cargo xtask bench opt` right after the Rust bench, with the fixture venv. Prints one JSON object:
{"<dtype>/<case>": {"median_s": .., "min_s": .., "runs": n}, "meta": {...}}.
"""

import argparse
import copy
import json
import os
import statistics
import time

import torch
import transformers
from transformers import DynamicCache, OPTConfig, OPTForCausalLM

PROMPT = 32


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
    parser.add_argument("--layers", type=int, default=int(os.environ.get("BLIP2_BENCH_LAYERS", 32)))
    parser.add_argument("--dtypes", default=os.environ.get("BLIP2_BENCH_DTYPES", "f32,bf16,int8"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=50304, hidden_size=2560, num_hidden_layers=args.layers, num_attention_heads=32,
                       ffn_dim=10240, eos_token_id=50118, word_embed_proj_dim=2560)
    config._attn_implementation = "sdpa"
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "int8": torch.float32}
    prompt = torch.tensor([[2 + (i * 7919) % 50000 for i in range(PROMPT)]])
    token = torch.tensor([[50118]])
    results = {}
    for name in args.dtypes.split(","):
        with torch.device("meta"):
            model = OPTForCausalLM(config)
        model = model.to_empty(device="cpu").to(dtypes[name]).eval()
        for p in model.parameters():  # random weights of a sane scale (no init cost measured)
            torch.nn.init.normal_(p, std=0.02)
        if name == "int8":
            model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
        with torch.inference_mode():
            def prefill():
                return model(input_ids=prompt, past_key_values=DynamicCache(), use_cache=True, logits_to_keep=1)

            results[f"{name}/prefill32"] = timed(prefill, args.runs)
            cache = prefill().past_key_values

            def decode():
                return model(input_ids=token, past_key_values=copy.deepcopy(cache), use_cache=True, logits_to_keep=1)

            results[f"{name}/decode"] = timed(decode, args.runs)
        del model
    big = torch.ones(1 << 28)  # 1 GiB of f32
    read = timed(lambda: big.sum(), 5)
    results["meta"] = {"read_GBps": round((1 << 30) / read["median_s"] / 1e9, 1), "torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "layers": args.layers,
                       "attn_implementation": config._attn_implementation,
                       "note": "decode includes a deepcopy of the 32-token cache"}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

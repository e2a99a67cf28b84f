"""Times transformers' BLIP-2 Q-Former (query tokens + Blip2QFormerModel) on the config blip2's Q-Former bench uses
(benches/qformer.rs): the hub's Q-Former, 32 queries reading [batch, 257, 1408] image embeddings, f32.

Run by `cargo xtask bench qformer` right after the Rust bench, with the fixture venv. Prints one JSON object:
{"f32/<batch>": {"median_s": .., "min_s": .., "runs": n}, "meta": {...}}.
"""

import argparse
import json
import os
import statistics
import time

import torch
import transformers
from transformers import Blip2QFormerConfig, Blip2QFormerModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", default=os.environ.get("BLIP2_BENCH_BATCHES", "1,4"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (transformers' default: sdpa)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    config = Blip2QFormerConfig()  # the hub's Q-Former
    config._attn_implementation = args.attn
    model = Blip2QFormerModel(config).to(args.device).eval()
    query_tokens = torch.randn(1, 32, config.hidden_size, device=args.device) * 0.02
    results = {}
    for batch in (int(b) for b in args.batches.split(",")):
        n = batch * 257 * 1408
        image = ((torch.arange(n) % 199).float() / 99.0 - 1.0).reshape(batch, 257, 1408).to(args.device)
        queries = query_tokens.expand(batch, -1, -1)
        times = []
        with torch.inference_mode():
            for _ in range(3):
                model(query_embeds=queries, encoder_hidden_states=image)  # warm-up
            sync()
            for _ in range(args.runs):
                start = time.perf_counter()
                model(query_embeds=queries, encoder_hidden_states=image)
                sync()
                times.append(time.perf_counter() - start)
        results[f"f32/{batch}"] = {"median_s": statistics.median(times), "min_s": min(times), "runs": len(times)}
    results["meta"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "device": args.device,
                       "attn_implementation": config._attn_implementation}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

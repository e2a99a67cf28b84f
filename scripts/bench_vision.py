"""Times transformers' Blip2VisionModel on the config blip2's ViT-g bench uses (benches/vision.rs), on CPU.

Run by `cargo xtask bench vision` right after the Rust bench, with the fixture venv (scripts/requirements.txt),
so both sides run on the same machine in the same session. Prints one JSON object:
{"<dtype>/<batch>": {"median_s": .., "min_s": .., "runs": n}, "meta": {...}}.
"""

import argparse
import json
import os
import platform
import statistics
import time

import torch
import transformers
from transformers import Blip2VisionConfig, Blip2VisionModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--layers", type=int, default=int(os.environ.get("BLIP2_BENCH_LAYERS", 39)))
    parser.add_argument("--batches", default=os.environ.get("BLIP2_BENCH_BATCHES", "1,4"))
    parser.add_argument("--dtypes", default=os.environ.get("BLIP2_BENCH_DTYPES", "f32,bf16"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda to time the same config on a GPU")
    parser.add_argument("--attn", default="sdpa", help="attention implementation (transformers' default: sdpa)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    torch.manual_seed(0)
    # The hub's ViT-g (transformers' defaults).
    config = Blip2VisionConfig(num_hidden_layers=args.layers, initializer_range=0.02)
    config._attn_implementation = args.attn
    dtypes = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    results = {}
    for name in args.dtypes.split(","):
        model = Blip2VisionModel(config).to(device=args.device, dtype=dtypes[name]).eval()
        for batch in (int(b) for b in args.batches.split(",")):
            n = batch * 3 * config.image_size**2
            pixels = ((torch.arange(n) % 251).float() / 125.0 - 1.0).reshape(batch, 3, config.image_size, -1)
            pixels = pixels.to(device=args.device, dtype=dtypes[name])
            times = []
            with torch.inference_mode():
                for _ in range(3 if args.device != "cpu" else 1):
                    model(pixel_values=pixels)  # warm-up
                sync()
                for _ in range(args.runs):
                    start = time.perf_counter()
                    model(pixel_values=pixels)
                    sync()
                    times.append(time.perf_counter() - start)
            results[f"{name}/{batch}"] = {"median_s": statistics.median(times), "min_s": min(times),
                                          "runs": len(times)}
        del model
    results["meta"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                       "threads": torch.get_num_threads(), "layers": args.layers,
                       "machine": platform.processor() or platform.machine(), "device": args.device,
                       "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
                       "attn_implementation": config._attn_implementation}
    print(json.dumps(results))


if __name__ == "__main__":
    main()

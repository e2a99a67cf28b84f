#!/usr/bin/env python3
"""Check that transformers loads a BLIP-2 directory re-saved by blip2 (`cargo run -p blip2 --example resave`) to the
same model as the fixture it came from: every parameter equal, and the single prompt's logits (the fixture's
inputs) equal bit for bit to those of the fixture directory loaded the same way.

    python scripts/check_resaved.py <re-saved dir> <fixture dir> [<re-saved dir> <fixture dir> ...]

Run by `cargo xtask fixtures --check`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import Blip2ForConditionalGeneration  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()


def check(resaved: Path, fixture: Path) -> list[str]:
    problems = []
    ours = Blip2ForConditionalGeneration.from_pretrained(resaved, attn_implementation="eager").eval()
    theirs = Blip2ForConditionalGeneration.from_pretrained(fixture, attn_implementation="eager").eval()
    mine, want = ours.state_dict(), theirs.state_dict()
    if mine.keys() != want.keys():
        problems.append(f"parameter names differ: {sorted(mine.keys() ^ want.keys())}")
    for key in sorted(mine.keys() & want.keys()):
        if not torch.equal(mine[key], want[key]):
            problems.append(f"{key} differs")
    ref = load_file(str(fixture / "reference.safetensors"))
    kwargs = {"pixel_values": ref["pixel_values"][:1], "input_ids": ref["input_ids/single"],
              "attention_mask": ref["attention_mask/single"]}
    if "labels/single" in ref:
        kwargs["labels"] = ref["labels/single"]
    with torch.no_grad():
        logits, want = ours(**kwargs).logits, theirs(**kwargs).logits
    if not torch.equal(logits, want):
        diff = (logits - want).abs().max().item()
        problems.append(f"the single prompt's logits differ from the fixture's by up to {diff:.3g}")
    return [f"{resaved}: {p}" for p in problems]


def main() -> int:
    args = [Path(a) for a in sys.argv[1:]]
    if not args or len(args) % 2:
        print(__doc__)
        return 2
    problems = []
    for resaved, fixture in zip(args[::2], args[1::2]):
        problems += check(resaved, fixture)
    if problems:
        print("transformers does not load what blip2 saved as the original:\n  " + "\n  ".join(problems))
        return 1
    print(f"transformers loads {len(args) // 2} directories saved by blip2 to the same parameters and logits")
    return 0


if __name__ == "__main__":
    sys.exit(main())

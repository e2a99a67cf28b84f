"""Shared pieces of the fixture generator: seeds and sizes, the reference store, weight initialisation, hooks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import PIL
import safetensors
import tokenizers
import torch
import transformers
from safetensors.torch import load_file, save_file


FORMAT_VERSION = 1
SEED = 20260401
MAX_NEW_TOKENS = 8
NUM_BEAMS = 3
# A greedy step whose best and second-best logits are closer than this would make the expected ids depend on
# rounding; the generator then tries the next seed (see `margin_ok`).
MIN_GREEDY_MARGIN = 2e-3

CORPUS = [
    "a photo of a cat sitting on a red couch",
    "two dogs playing in the grass near a tree",
    "a small red house with a white door",
    "a man riding a bike down the street",
    "a bowl of fruit on a wooden table",
    "the sky is blue and the sun is bright",
    "a woman holding an umbrella in the rain",
    "three birds flying over the sea at sunset",
    "a plate of food with rice and green beans",
    "a train stopping at a busy station",
    "Question: what is on the table? Answer: a bowl of fruit",
    "Question: how many cats are there? Answer: two",
    "Question: what color is the sky? Answer: blue",
    "Question: where is the dog? Answer: on the grass",
    "describe the image in detail",
    "an old car parked next to a stone wall",
    "children playing football in a park",
    "a cup of coffee and a book on a desk",
    "a snowy mountain under a cloudy sky",
    "a boat floating on a calm lake",
    "a close up of a yellow flower",
    "people walking on a beach with their dogs",
    "a kitchen with a stove and a sink",
    "a black and white photo of a city street",
    "the cat is sleeping on the bed",
    "Question: what is the man doing? Answer: riding a bike",
    "Question: is it raining? Answer: yes",
    "a giraffe standing next to a tall tree",
    "a pizza with cheese and tomatoes",
    "a laptop computer on a white desk\nnext to a lamp",
]

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# ----------------------------------------------------------------------------------------------------------------
# Reference store
# ----------------------------------------------------------------------------------------------------------------


class Refs:
    """Reference tensors with a one-line description each; saved as reference.safetensors + reference.json."""

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.descriptions: dict[str, str] = {}

    def add(self, key: str, value, description: str) -> None:
        if key in self.tensors:
            raise KeyError(f"duplicate reference key {key}")
        t = value if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))
        t = t.detach().cpu()
        if t.dtype.is_floating_point:
            t = t.to(torch.float32)
        elif t.dtype == torch.bool:
            t = t.to(torch.uint8)
        elif t.dtype != torch.uint8:
            t = t.to(torch.int64)
        self.tensors[key] = t.contiguous().clone()
        self.descriptions[key] = description

    def save(self, directory: Path, meta: dict) -> None:
        save_file(self.tensors, str(directory / "reference.safetensors"), metadata={"format": "pt"})
        names = {torch.float32: "F32", torch.int64: "I64", torch.uint8: "U8"}
        manifest = dict(meta)
        manifest["tensors"] = {
            key: {
                "shape": list(self.tensors[key].shape),
                "dtype": names[self.tensors[key].dtype],
                "description": self.descriptions[key],
            }
            for key in sorted(self.tensors)
        }
        write_json(directory / "reference.json", manifest)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n")


def versions() -> dict:
    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }


# ----------------------------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------------------------

NORM_HINTS = ("layernorm", "layer_norm", "LayerNorm")


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Overwrite HF's init with seeded, non-trivial values.

    HF's default init zeroes `query_tokens` and makes the vision tower nearly constant, which would let a port with
    a wrong query path or a skipped vision layer pass. Here every parameter is random and of a scale that keeps
    activations O(1): linear/conv weights N(0, 1/fan_in), norm weights 1 + N(0, 0.2^2), biases N(0, 0.1^2)
    (including the key third of the fused vision `qkv.bias`, which real checkpoints hold as zeros),
    embeddings and position tables N(0, 0.5^2), query tokens N(0, 1).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            if leaf == "weight" and any(h in name for h in NORM_HINTS):
                value = 1.0 + 0.2 * noise
            elif leaf == "bias":
                value = 0.1 * noise
            elif name.endswith("query_tokens"):
                value = noise
            elif name.endswith("patch_embedding.weight"):
                value = noise / np.sqrt(np.prod(p.shape[1:]))
            elif "embed" in name or "shared" in name or "relative_attention_bias" in name:
                value = 0.5 * noise
            elif p.dim() >= 2:
                value = noise / np.sqrt(np.prod(p.shape[1:]))
            else:
                value = 0.5 * noise
            p.copy_(value.to(p.dtype))


def file_keys(directory: Path) -> dict[str, list[int]]:
    out = {}
    for f in sorted(directory.glob("*.safetensors")):
        if f.name == "reference.safetensors":
            continue
        for k, v in load_file(str(f)).items():
            out[k] = list(v.shape)
    return out


def untie_t5_head(directory: Path, prefix: str, head: torch.Tensor) -> None:
    """Make a saved T5 an untied, unscaled Flan-T5 as the hub files are.

    transformers 5.24 ties T5's `lm_head` to `shared` when it builds a model, and only keeps them apart when a
    checkpoint holds both with different values; `scale_decoder_outputs` comes from the config's
    `tie_word_embeddings: false`. So the head must be in the file (written here if the save left it out), and the
    config gets the hub's form.
    """
    path = directory / "model.safetensors"
    tensors = load_file(str(path))
    key = f"{prefix}lm_head.weight"
    if key in tensors:
        if not torch.equal(tensors[key], head.detach()):
            raise AssertionError(f"{key} in the saved file is not the model's head")
    else:
        tensors[key] = head.detach().clone().contiguous()
        save_file(tensors, str(path), metadata={"format": "pt"})
    config = json.loads((directory / "config.json").read_text())
    text = config["text_config"] if "text_config" in config else config
    text["tie_word_embeddings"] = False
    text.pop("scale_decoder_outputs", None)
    write_json(directory / "config.json", config)


def give_own_head(lm, seed: int) -> None:
    """Replace the in-memory T5 head (tied to `shared` by transformers 5.24) with its own random weights."""
    g = torch.Generator().manual_seed(seed)
    shape = lm.shared.weight.shape
    lm.lm_head.weight = torch.nn.Parameter(torch.randn(shape, generator=g) / np.sqrt(shape[1]))
    lm.config.scale_decoder_outputs = False


def check_untied(lm) -> None:
    if torch.equal(lm.lm_head.weight, lm.shared.weight) or lm.config.scale_decoder_outputs:
        raise AssertionError("the Flan-T5 fixture did not load with an untied, unscaled lm_head")


# ----------------------------------------------------------------------------------------------------------------
# Shared reference pieces
# ----------------------------------------------------------------------------------------------------------------


def hooks(modules: dict[str, torch.nn.Module], store: dict[str, torch.Tensor]):
    handles = []
    for name, module in modules.items():

        def hook(_m, _inp, out, name=name):
            store[name] = (out[0] if isinstance(out, tuple) else out).detach().clone()

        handles.append(module.register_forward_hook(hook))
    return handles


def remove(handles) -> None:
    for h in handles:
        h.remove()


def margin_ok(step_logits: list[torch.Tensor]) -> float:
    """Smallest gap between the best and second-best raw logit over all greedy steps and rows."""
    gaps = []
    for logits in step_logits:
        top = torch.topk(logits.float(), 2, dim=-1).values
        gaps.append((top[:, 0] - top[:, 1]).min().item())
    return min(gaps)


def tokens_of(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])

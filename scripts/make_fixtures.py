#!/usr/bin/env python3
"""Generate blip2's reference fixtures with HF transformers (the reference implementation).

Every fixture is a tiny random-weight model built from a config (no hub access), saved as an ordinary HF model
directory, reloaded from that directory, and run stage by stage in f32 with eager attention. The outputs go to
`reference.safetensors`, described key by key in `reference.json`.

    python scripts/make_fixtures.py --out fixtures            # (re)generate
    python scripts/make_fixtures.py --out fixtures --check    # generate twice, compare bit for bit with each
                                                              # other and with what is in --out

Run it through `cargo xtask fixtures [--check]`, which makes the pinned venv (scripts/requirements.txt).
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

# Determinism: one thread everywhere, before torch/tokenizers start their pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import safetensors  # noqa: E402
import tokenizers  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402
from transformers import (  # noqa: E402
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Model,
    Blip2Processor,
    Blip2QFormerConfig,
    Blip2TextModelWithProjection,
    Blip2VisionConfig,
    Blip2VisionModelWithProjection,
    GenerationConfig,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)
from transformers.generation.logits_process import (  # noqa: E402
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.image_utils import PILImageResampling  # noqa: E402
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil  # noqa: E402
from transformers.models.t5.modeling_t5 import T5Attention  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

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


def legacy_processor_files(directory: Path, processor: Blip2Processor) -> None:
    """The hub's older layout: image processor in preprocessor_config.json, processor_config.json holding only
    num_query_tokens (the files of Salesforce/blip2-* look like this)."""
    processor.image_processor.save_pretrained(directory)
    write_json(directory / "processor_config.json",
               {"num_query_tokens": processor.num_query_tokens, "processor_class": "Blip2Processor"})


# ----------------------------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------------------------


def make_images(out: Path) -> dict[str, Path]:
    """Small deterministic test images: RGB, RGBA, grayscale (8 and 16 bit), gray+alpha, palette with
    transparency, PNG and JPEG, odd sizes for up- and downscaling."""
    rng = np.random.default_rng(SEED + 1)
    out.mkdir(parents=True, exist_ok=True)

    def pattern(h: int, w: int, channels: int, amplitude: float = 255.0) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [
            x / max(w - 1, 1),
            y / max(h - 1, 1),
            0.5 + 0.5 * np.sin(x / 2.3 + y / 3.1),
            ((x // 4 + y // 4) % 2) * 0.8 + 0.1,
        ]
        img = np.stack([planes[c % len(planes)] for c in range(channels)], axis=-1)
        img = img + rng.normal(0.0, 0.12, size=img.shape)
        return np.clip(np.round(img * amplitude), 0, amplitude)

    paths = {}

    def save(name: str, image: Image.Image, **kwargs) -> None:
        path = out / name
        image.save(path, **kwargs)
        paths[Path(name).stem] = path

    save("rgb_37x29.png", Image.fromarray(pattern(29, 37, 3).astype(np.uint8), "RGB"))
    rgba = pattern(23, 31, 4).astype(np.uint8)
    rgba[:5, :, 3] = 0  # fully transparent band: composited to white
    rgba[-5:, :, 3] = 255  # opaque band
    save("rgba_31x23.png", Image.fromarray(rgba, "RGBA"))
    save("gray_19x41.png", Image.fromarray(pattern(41, 19, 1)[..., 0].astype(np.uint8), "L"))
    save("gray_alpha_21x21.png", Image.fromarray(pattern(21, 21, 2).astype(np.uint8), "LA"))
    gray16 = pattern(17, 23, 1, amplitude=65535.0)[..., 0].astype(np.uint16)
    save("gray16_23x17.png", Image.fromarray(gray16))  # PIL mode I;16
    pal = Image.fromarray(pattern(19, 25, 3).astype(np.uint8), "RGB").quantize(colors=16, dither=Image.Dither.NONE)
    save("palette_25x19.png", pal, transparency=0)
    save("photo_45x33.jpg", Image.fromarray(pattern(33, 45, 3).astype(np.uint8), "RGB"), quality=90)
    save("large_97x71.png", Image.fromarray(pattern(71, 97, 3).astype(np.uint8), "RGB"))
    save("gray_27x35.jpg", Image.fromarray(pattern(35, 27, 1)[..., 0].astype(np.uint8), "L"), quality=85)
    return paths


def load_image(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


# ----------------------------------------------------------------------------------------------------------------
# Tokenizers (trained here, so no hub access is needed)
# ----------------------------------------------------------------------------------------------------------------


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE in OPT's style: <s>=0 <pad>=1 </s>=2 <unk>=3, BOS `</s>` prepended."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=330,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    tok.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="</s> $A", pair="</s> $A </s> $B", special_tokens=[("</s>", tok.token_to_id("</s>"))]
            ),
        ]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=64,
    )


def corpus_words() -> list[tuple[str, int]]:
    """Words of the corpus with their counts, most frequent first (ties by the word): a deterministic order.
    (The tokenizers crate's Unigram and WordPiece trainers iterate hash maps, so their output changes from run to
    run; the vocabularies below are built by hand instead.)"""
    counts: dict[str, int] = {}
    for line in CORPUS:
        for word in line.split():
            counts[word] = counts.get(word, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def unigram_tokenizer() -> PreTrainedTokenizerFast:
    """Unigram in T5's style: <pad>=0 </s>=1 <unk>=2, `</s>` appended, Metaspace pre-tokenizer.

    Pieces: every character, `▁`, the 60 most frequent words as `▁word`, and frequent word-initial and inner
    fragments; scores are log relative frequencies, so the segmentation mixes whole words and pieces."""
    words = corpus_words()
    total = sum(c for _, c in words)
    pieces: dict[str, float] = {}

    def add(piece: str, count: int) -> None:
        score = float(np.log(count / total)) - 0.5 * len(piece)
        pieces[piece] = max(pieces.get(piece, -1e9), score)

    for word, count in words[:60]:
        add("▁" + word, count)
    fragments: dict[str, int] = {}
    for word, count in words:
        for n in (2, 3):
            fragments["▁" + word[:n]] = fragments.get("▁" + word[:n], 0) + count
            for i in range(1, len(word) - n + 1):
                fragments[word[i:i + n]] = fragments.get(word[i:i + n], 0) + count
    for frag, count in sorted(fragments.items(), key=lambda kv: (-kv[1], kv[0]))[:50]:
        add(frag, count)
    chars = sorted({ch for line in CORPUS for ch in line if not ch.isspace()})
    for ch in chars:
        add(ch, 1)
    add("▁", total)
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)] + sorted(pieces.items(), key=lambda kv: (-kv[1], kv[0]))
    tok = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace("\n", " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=64,
    )


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    """WordPiece in BERT's style (the Q-Former's text tower): [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3 [MASK]=4, plus the
    `[DEC]` BOS token that LAVIS adds (which makes the real Q-Former vocabulary 30523).

    Vocabulary: the specials, every character and its `##` continuation, the 70 most frequent words and a few
    frequent word endings, so that words split into pieces too."""
    words = [(w.lower().strip("?:"), c) for w, c in corpus_words()]
    chars = sorted({ch for line in CORPUS for ch in line.lower() if not ch.isspace()})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += chars + ["##" + ch for ch in chars if ch.isalnum()]
    for word, _ in words[:70]:
        if word and word not in vocab:
            vocab.append(word)
    for ending in ("##ing", "##ed", "##er", "##s", "##ly", "##en"):
        if ending not in vocab:
            vocab.append(ending)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.add_special_tokens(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", 2), ("[SEP]", 3)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        padding_side="right",
        model_max_length=24,
    )
    fast.add_special_tokens({"bos_token": "[DEC]"})
    return fast


def check_tokenizer_file(directory: Path, hf_tokenizer, texts: list[str]) -> None:
    """The Rust side reads tokenizer.json with the `tokenizers` crate: it must give what transformers gives."""
    raw = Tokenizer.from_file(str(directory / "tokenizer.json"))
    for text in texts:
        want = hf_tokenizer(text)["input_ids"]
        got = raw.encode(text).ids
        if want != got:
            raise AssertionError(f"tokenizer.json disagrees with transformers on {text!r}: {got} vs {want}")


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


def add_processor_refs(refs: Refs, processor: Blip2Processor, images: dict[str, Path]) -> None:
    ip = processor.image_processor
    size = ip.size
    for stem, path in images.items():
        image = load_image(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        refs.add(
            f"processor/pixel_values/{stem}",
            pixel_values,
            f"image processor output for images/{path.name} (mode {image.mode}, {image.width}x{image.height})",
        )
        # The uint8 image after RGB conversion and PIL bicubic resize, before rescale/normalize.
        chw = ip.process_image(load_image(path), do_convert_rgb=True)
        refs.add(
            f"processor/rgb/{stem}",
            torch.from_numpy(np.moveaxis(chw, 0, -1).copy()),
            f"images/{path.name} converted to RGB as HF does (alpha over white), HWC uint8",
        )
        resized = ip.resize(image=chw, size=type(ip.size)(**size) if isinstance(size, dict) else size,
                            resample=PILImageResampling.BICUBIC)
        resized_hwc = torch.from_numpy(np.moveaxis(resized, 0, -1).copy())
        refs.add(
            f"processor/resized/{stem}",
            resized_hwc,
            f"images/{path.name} after PIL bicubic resize to the processor size, HWC uint8",
        )
        # The stored uint8 resize must be exactly what the pixel values were computed from.
        mean = torch.tensor(CLIP_MEAN).view(1, 1, 3)
        std = torch.tensor(CLIP_STD).view(1, 1, 3)
        again = ((resized_hwc.double() / 255.0 - mean) / std).permute(2, 0, 1).float()
        if not torch.allclose(again, pixel_values[0], atol=1e-5):
            raise AssertionError(f"resized uint8 of {stem} does not reproduce pixel_values")


def add_vision_refs(refs: Refs, vision: torch.nn.Module, pixel_values: torch.Tensor, prefix: str,
                    interpolate: bool = False) -> None:
    store: dict[str, torch.Tensor] = {}
    modules = {"embeddings": vision.embeddings}
    for i, layer in enumerate(vision.encoder.layers):
        modules[f"layer.{i}"] = layer
    handles = hooks(modules, store)
    with torch.no_grad():
        out = vision(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
    remove(handles)
    what = "interpolated-position run" if interpolate else "vision tower"
    refs.add(f"{prefix}/embeddings", store["embeddings"], f"{what}: patch + class + position embeddings")
    for i in range(len(vision.encoder.layers)):
        refs.add(f"{prefix}/layer.{i}", store[f"layer.{i}"], f"{what}: output of encoder layer {i}")
    refs.add(f"{prefix}/last_hidden_state", out.last_hidden_state, f"{what}: post_layernorm(encoder output)")
    refs.add(f"{prefix}/pooler_output", out.pooler_output, f"{what}: post_layernorm applied again to the CLS row")


def add_qformer_refs(refs: Refs, qformer: torch.nn.Module, call, prefix: str, what: str):
    store: dict[str, torch.Tensor] = {}
    modules = {"layernorm": qformer.layernorm}
    for i, layer in enumerate(qformer.encoder.layer):
        modules[f"layer.{i}"] = layer
    handles = hooks(modules, store)
    with torch.no_grad():
        out = call()
    remove(handles)
    refs.add(f"{prefix}/layernorm", store["layernorm"], f"{what}: Q-Former input layernorm output")
    for i in range(len(qformer.encoder.layer)):
        cross = qformer.encoder.layer[i].has_cross_attention
        refs.add(f"{prefix}/layer.{i}", store[f"layer.{i}"],
                 f"{what}: Q-Former layer {i} output ({'with' if cross else 'no'} cross-attention)")
    return out


def tokens_of(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens([int(i) for i in ids])


# ----------------------------------------------------------------------------------------------------------------
# BLIP-2 with an LM (tiny-opt, tiny-t5)
# ----------------------------------------------------------------------------------------------------------------


def q8_group_for(n: int, group: int) -> int | None:
    """blip2's rule: `group` when it divides `n`, else the largest smaller multiple of 16 that does (at most 240)."""
    for g in range(min(group, 240) // 16, 0, -1):
        if n % (g * 16) == 0:
            return g * 16
    return None


Q8_ACT_BLOCK = 128  # inputs per activation scale (blip2_nn::kernels::Q8_ACT_BLOCK)


def quantize_q8(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """blip2's int8 weights for a PyTorch-layout [out, in] weight: in the [in, out] orientation, one scale per block
    of `group` consecutive outputs of each input, scale = max|w| / 127 (1 when not a normal float),
    q = round-half-even(w / scale) clamped to [-127, 127]. Returns q [in, out] and the scales [in, out / group]."""
    wt = weight.detach().t().contiguous().float()
    k, n = wt.shape
    blocks = wt.reshape(k, n // group, group)
    scale = blocks.abs().amax(dim=-1, keepdim=True) / 127.0
    normal = torch.isfinite(scale) & (scale >= torch.finfo(torch.float32).tiny)
    scale = torch.where(normal, scale, torch.ones_like(scale))
    q = torch.round(blocks / scale).clamp(-127, 127)
    return q.reshape(k, n), scale.reshape(k, n // group)


def q8_product(x: torch.Tensor, q: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    """blip2's int8 product (blip2_nn::kernels::linear_q8): the weight's scales move onto the activations, which
    are quantized per block of Q8_ACT_BLOCK inputs and group (t = amax / 127, p = round-half-even(a * (127 / amax))
    clamped to [-127, 127]); the integer sums are exact; each block adds fma(S, t, y) in f32 (here in f64, rounded
    once), block after block."""
    k, n = q.shape
    shape = x.shape
    x2 = x.reshape(-1, k).float()
    m = x2.shape[0]
    tiny = torch.finfo(torch.float32).tiny
    y = torch.zeros(m, n, dtype=torch.float32)
    for l0 in range(0, k, Q8_ACT_BLOCK):
        l1 = min(l0 + Q8_ACT_BLOCK, k)
        a = x2[:, l0:l1, None] * scales[None, l0:l1, :]  # [m, block, groups], f32
        bad = torch.isnan(a).any(dim=1)
        amax = torch.nan_to_num(a.abs(), nan=0.0).amax(dim=1)
        bad = bad | torch.isinf(amax)
        t = amax / 127.0
        normal = t >= tiny
        r = torch.where(normal, 127.0 / amax, torch.ones_like(amax))
        t = torch.where(normal, t, torch.ones_like(t))
        t = torch.where(bad, torch.full_like(t, float("nan")), t)
        r = torch.where(bad, torch.zeros_like(r), r)
        p = torch.round(a * r[:, None, :]).clamp(-127, 127)
        p = torch.where(bad[:, None, :], torch.zeros_like(p), p)
        sums = torch.einsum("mln,ln->mn", p.repeat_interleave(group, dim=2).double(), q[l0:l1].double())
        y = (sums * t.repeat_interleave(group, dim=1).double() + y.double()).float()
    return y.reshape(*shape[:-1], n)


def quantize_lm_linears(model, group: int) -> dict[str, int]:
    """Makes every nn.Linear of the language model run blip2's int8 product (weights quantized once, activations per
    call); returns name -> group."""
    done = {}
    embeddings = model.language_model.get_input_embeddings()
    for name, module in model.language_model.named_modules():
        if isinstance(module, torch.nn.Linear):
            g = q8_group_for(module.out_features, group)
            if g is None:
                continue
            q, scales = quantize_q8(module.weight, g)
            if module.weight is embeddings.weight:
                # A tied head in int8 (OPT) replaces the embedding table in blip2 (`embeddings_from_head`): the
                # lookups read its int8 values, q * scale in f32.
                dequantized = (q * scales.repeat_interleave(g, dim=1)).t().contiguous()
                embeddings.weight = torch.nn.Parameter(dequantized, requires_grad=False)

            def forward(x, q=q, scales=scales, g=g, bias=module.bias):
                y = q8_product(x, q, scales, g).to(x.dtype)
                return y if bias is None else y + bias

            module.forward = forward
            done[f"language_model.{name}"] = g
    return done


def add_int8_refs(refs: "Refs", model, pixel_values, single, is_t5: bool, group: int, labels=None) -> dict:
    """References for `Precision` with the language model's Linear layers in int8: the model with those layers
    running blip2's int8 product (int8 weights, activations quantized per call, exact integer sums; see
    `q8_product`). Changes `model` in place: call last."""
    quantized = quantize_lm_linears(model, group)
    with torch.no_grad():
        kwargs = {"labels": labels[:1]} if is_t5 else {}
        out = model(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                    attention_mask=single["attention_mask"], **kwargs)
        refs.add("int8/lm/logits/single", out.logits, "lm/logits/single with the LM's Linear layers in int8")
        g = model.generate(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                           attention_mask=single["attention_mask"], max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                           num_beams=1, output_logits=True, return_dict_in_generate=True)
        refs.add("int8/gen/greedy/single", g.sequences, "greedy ids with the LM's Linear layers in int8")
        refs.add("int8/gen/greedy/single/logits", torch.stack(g.logits), "their raw step logits")
    return {"group": group, "quantized": quantized, "min_greedy_margin": margin_ok(list(g.logits))}


def blip2_lm_fixture(out: Path, name: str, images: dict[str, Path], seed: int, spec: dict) -> None:
    directory = out / name
    directory.mkdir(parents=True)
    is_t5 = spec["lm"] == "t5"
    tokenizer = unigram_tokenizer() if is_t5 else bpe_tokenizer()
    image_processor = BlipImageProcessorPil(
        size={"height": spec["image_size"], "width": spec["image_size"]}, resample=PILImageResampling.BICUBIC
    )
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=spec["num_query_tokens"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    vocab = len(tokenizer)
    if spec.get("vocab_multiple"):
        # Rows past the tokenizer's, as the hub's OPT pads its 50265 tokens (and `<image>`) to 50304.
        vocab = -(-vocab // spec["vocab_multiple"]) * spec["vocab_multiple"]

    vision_config = Blip2VisionConfig(**spec["vision"], image_size=spec["image_size"])
    qformer_config = Blip2QFormerConfig(**spec["qformer"])
    if is_t5:
        text_config = T5Config(vocab_size=vocab, **spec["text"])
    else:
        text_config = OPTConfig(vocab_size=vocab, **spec["text"])
    config = Blip2Config(
        vision_config=vision_config.to_dict(),
        qformer_config=qformer_config.to_dict(),
        text_config=text_config.to_dict(),
        num_query_tokens=spec["num_query_tokens"],
        image_token_index=image_token,
    )
    config._attn_implementation = "eager"

    for attempt in range(20):
        model_seed = seed + 1000 * attempt
        torch.manual_seed(model_seed)
        model = Blip2ForConditionalGeneration(config).eval()
        init_weights(model, model_seed)
        if is_t5:
            give_own_head(model.language_model, model_seed + 1)
        result = try_blip2_lm(model, processor, tokenizer, images, spec, is_t5)
        if result is not None:
            break
    else:
        raise RuntimeError(f"{name}: no seed gave greedy margins >= {MIN_GREEDY_MARGIN}")
    eos_extra, margin = result

    # Final special tokens: OPT stops on one chosen token as the real checkpoints stop on "\n" (50118);
    # T5 keeps `</s>` and adds the chosen token (several eos ids).
    if is_t5:
        eos = [tokenizer.eos_token_id, eos_extra]
        model.config.text_config.eos_token_id = tokenizer.eos_token_id
        gen = GenerationConfig(
            decoder_start_token_id=0, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
        )
    else:
        eos = eos_extra
        model.config.text_config.eos_token_id = eos
        model.config.text_config.bos_token_id = tokenizer.bos_token_id
        model.config.text_config.pad_token_id = tokenizer.pad_token_id
        gen = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id
        )
    model.generation_config = gen
    if spec.get("form") == "saved":
        save_as_transformers_does(model, directory, is_t5)
    else:
        model.save_pretrained(directory)
        if is_t5:
            untie_t5_head(directory, "language_model.", model.language_model.lm_head.weight)
    processor.save_pretrained(directory)
    gen.save_pretrained(directory)
    if spec["legacy_processor_files"]:
        legacy_processor_files(directory, processor)

    # Everything below runs on the model reloaded from disk.
    model = Blip2ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
    processor = Blip2Processor.from_pretrained(directory)
    if is_t5:
        check_untied(model.language_model)
    tokenizer = processor.tokenizer
    check_tokenizer_file(directory, tokenizer, spec["prompts"]["batch"] + [spec["prompts"]["single"]])

    refs = Refs()
    add_processor_refs(refs, processor, images)
    stems = spec["images"]
    pixel_values = torch.cat([processor(images=load_image(images[s]), return_tensors="pt")["pixel_values"]
                              for s in stems])
    refs.add("pixel_values", pixel_values, f"processor output for images {stems} (the batch of two)")

    # Vision tower, Q-Former, projection on the batch of two images.
    add_vision_refs(refs, model.vision_model, pixel_values, "vision")
    interp_size = spec["interpolate_size"]
    interp_pixels = processor.image_processor(
        [load_image(images[s]) for s in stems], size={"height": interp_size[0], "width": interp_size[1]},
        return_tensors="pt")["pixel_values"]
    refs.add("vision_interp/pixel_values", interp_pixels,
             f"the two images processed at {interp_size[0]}x{interp_size[1]} (height x width)")
    add_vision_refs(refs, model.vision_model, interp_pixels, "vision_interp", interpolate=True)

    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    queries = model.query_tokens.expand(image_embeds.shape[0], -1, -1)
    q_out = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)),
        "qformer", "queries reading the two images")
    refs.add("qformer/last_hidden_state", q_out.last_hidden_state, "Q-Former last_hidden_state")
    refs.add("qformer/pooler_output", q_out.pooler_output, "Q-Former pooler_output (row 0, no dense layer)")
    with torch.no_grad():
        projected = model.language_projection(q_out.last_hidden_state)
    refs.add("language_projection", projected, "language_projection(Q-Former output): the LM soft prompt")

    # Prompts through the processor, then the LM.
    single = processor(images=load_image(images[stems[0]]), text=spec["prompts"]["single"], return_tensors="pt")
    batch = processor(images=[load_image(images[s]) for s in stems], text=spec["prompts"]["batch"],
                      padding=True, return_tensors="pt")
    for tag, enc in (("single", single), ("batch", batch)):
        refs.add(f"input_ids/{tag}", enc["input_ids"], f"processor input_ids for the {tag} prompt(s), "
                 f"{spec['num_query_tokens']} <image> ids prepended, {tokenizer.padding_side}-padded")
        refs.add(f"attention_mask/{tag}", enc["attention_mask"], f"processor attention_mask ({tag})")

    lm_inputs: dict[str, dict] = {}

    def capture_lm(_m, _args, kwargs):
        lm_inputs["last"] = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}

    handle = model.language_model.register_forward_pre_hook(capture_lm, with_kwargs=True)
    if is_t5:
        targets = tokenizer(spec["prompts"]["labels"], padding=True, return_tensors="pt")
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        refs.add("labels/batch", labels, f"T5 labels for {spec['prompts']['labels']} (pads -> -100)")
        with torch.no_grad():
            out_single = model(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                               attention_mask=single["attention_mask"], labels=labels[:1])
        refs.add("labels/single", labels[:1], "T5 labels for the single prompt (row 0 of labels/batch)")
        refs.add("lm/inputs_embeds/single", lm_inputs["last"]["inputs_embeds"],
                 "T5 encoder inputs_embeds after the <image> rows were overwritten by the projected queries")
        refs.add("lm/logits/single", out_single.logits, "teacher-forced decoder logits, labels row 0")
        refs.add("lm/encoder_last_hidden_state/single", out_single.language_model_outputs.encoder_last_hidden_state,
                 "T5 encoder output for the single prompt")
    else:
        with torch.no_grad():
            out_single = model(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                               attention_mask=single["attention_mask"])
        refs.add("lm/inputs_embeds/single", lm_inputs["last"]["inputs_embeds"],
                 "OPT inputs_embeds after the <image> rows were overwritten by the projected queries")
        refs.add("lm/logits/single", out_single.logits, "OPT logits for every position of the single prompt")
        labels = batch["input_ids"].masked_fill(
            (batch["attention_mask"] == 0) | (batch["input_ids"] == image_token), -100)
        refs.add("labels/batch", labels, "OPT labels: input_ids with pads and <image> positions -> -100")

    head_variants = []
    if spec.get("form") == "saved":
        head_variants = head_variant_refs(refs, directory, is_t5, seed + 7, lambda m: m(
            pixel_values=pixel_values[:1], input_ids=single["input_ids"], attention_mask=single["attention_mask"],
            **({"labels": labels[:1]} if is_t5 else {})).logits)

    model.zero_grad()
    out_batch = model(pixel_values=pixel_values, input_ids=batch["input_ids"],
                      attention_mask=batch["attention_mask"], labels=labels)
    handle.remove()
    refs.add("lm/inputs_embeds/batch", lm_inputs["last"]["inputs_embeds"], "LM inputs_embeds for the padded batch")
    refs.add("lm/logits/batch", out_batch.logits,
             "teacher-forced decoder logits (batch)" if is_t5 else "OPT logits for the padded batch")
    if is_t5:
        refs.add("lm/decoder_input_ids/batch", torch.cat(
            [torch.zeros_like(labels[:, :1]), labels[:, :-1].masked_fill(labels[:, :-1] == -100, 0)], 1),
            "labels shifted right with decoder_start_token_id 0 (-100 -> pad 0)")
        refs.add("lm/encoder_last_hidden_state/batch", out_batch.language_model_outputs.encoder_last_hidden_state,
                 "T5 encoder output for the batch")
    refs.add("lm/loss/batch", out_batch.loss.reshape(1), "HF loss with labels/batch (mean over non-ignored tokens)")
    out_batch.loss.backward()
    for pname in spec["grad_params"]:
        param = dict(model.named_parameters())[pname]
        refs.add(f"grad/{pname}", param.grad, f"d loss/batch / d {pname}")
    model.zero_grad()

    # Generation.
    gen_meta = {}
    with torch.no_grad():
        for tag, enc, px in (("single", single, pixel_values[:1]), ("batch", batch, pixel_values)):
            g = model.generate(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                               output_logits=True, return_dict_in_generate=True)
            refs.add(f"gen/greedy/{tag}", g.sequences, "greedy ids as generate() returns them"
                     + ("" if is_t5 else " (prompt ids followed by new ids)"))
            refs.add(f"gen/greedy/{tag}/logits", torch.stack(g.logits),
                     "raw logits of each greedy step with HF's cache [step, batch, vocab]")
            b = model.generate(pixel_values=px, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                               max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=NUM_BEAMS,
                               output_scores=True, return_dict_in_generate=True)
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}", b.sequences, f"{NUM_BEAMS}-beam ids")
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}/scores", b.sequences_scores, "beam sequences_scores")
        b = model.generate(pixel_values=pixel_values[:1], input_ids=single["input_ids"],
                           attention_mask=single["attention_mask"], max_new_tokens=MAX_NEW_TOKENS,
                           num_beams=NUM_BEAMS, num_return_sequences=2, output_scores=True,
                           return_dict_in_generate=True)
        refs.add(f"gen/beam{NUM_BEAMS}_return2/single", b.sequences, "3 beams, num_return_sequences 2")
        refs.add(f"gen/beam{NUM_BEAMS}_return2/single/scores", b.sequences_scores, "their sequences_scores")
        if is_t5:
            # HF 5.24 cannot caption without a prompt for T5; LAVIS feeds `</s>`: [<image> x n, </s>].
            ids = torch.tensor([[image_token] * spec["num_query_tokens"] + [tokenizer.eos_token_id]])
            g = model.generate(pixel_values=pixel_values[:1], input_ids=ids, max_new_tokens=MAX_NEW_TOKENS)
            refs.add("gen/greedy/noprompt/input_ids", ids, "caption without prompt: [<image> x n, </s>]")
        else:
            g = model.generate(pixel_values=pixel_values[:1], max_new_tokens=MAX_NEW_TOKENS)
            refs.add("gen/greedy/noprompt/input_ids",
                     torch.tensor([[image_token] * spec["num_query_tokens"] + [tokenizer.bos_token_id]]),
                     "caption without prompt: HF's [<image> x n, bos]")
        refs.add("gen/greedy/noprompt", g, "greedy caption without a prompt, image 0")
    gen_meta = {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": NUM_BEAMS, "eos_token_id": eos,
                "pad_token_id": tokenizer.pad_token_id, "min_greedy_margin": margin,
                "decoded_greedy_batch": tokenizer.batch_decode(refs.tensors["gen/greedy/batch"],
                                                               skip_special_tokens=True)}

    # Blip2Model feature methods, loaded from the same directory.
    base = Blip2Model.from_pretrained(directory, attn_implementation="eager").eval()
    text_only = tokenizer(spec["prompts"]["batch"], padding=True, return_tensors="pt")
    with torch.no_grad():
        f = base.get_image_features(pixel_values=pixel_values)
        refs.add("features/image/last_hidden_state", f.last_hidden_state, "Blip2Model.get_image_features")
        refs.add("features/image/pooler_output", f.pooler_output, "Blip2Model.get_image_features pooler")
        refs.add("features/qformer", base.get_qformer_features(pixel_values=pixel_values),
                 "Blip2Model.get_qformer_features (Q-Former last_hidden_state)")
        refs.add("features/text/input_ids", text_only["input_ids"], "text-only tokenization of the batch prompts")
        refs.add("features/text/attention_mask", text_only["attention_mask"], "its attention mask")
        refs.add("features/text", base.get_text_features(
            input_ids=text_only["input_ids"], attention_mask=text_only["attention_mask"]).last_hidden_state,
            "Blip2Model.get_text_features: " + ("T5 encoder output" if is_t5 else "OPT decoder output"))

    int8_meta = None
    if spec.get("int8_group"):
        int8_meta = add_int8_refs(refs, model, pixel_values, single, is_t5, spec["int8_group"],
                                  labels if is_t5 else None)

    meta = {
        "format_version": FORMAT_VERSION,
        "fixture": name,
        "what": f"Blip2ForConditionalGeneration with {'Flan-T5-style T5' if is_t5 else 'OPT'}",
        "versions": versions(),
        "seed": seed,
        "model_seed": model_seed,
        "attn_implementation": "eager",
        "dtype": "float32",
        "images": {s: images[s].name for s in stems},
        "prompts": spec["prompts"],
        "generation": gen_meta,
        "image_token_index": image_token,
        "checkpoint_keys": file_keys(directory),
    }
    if int8_meta is not None:
        meta["int8"] = int8_meta
    if spec.get("form") == "saved":
        meta["form"] = ("transformers 5.24 save_pretrained output, unedited"
                        + (" (of the model loaded from the hub's form)" if is_t5 else ""))
        meta["head_variants"] = head_variants
    refs.save(directory, meta)


def save_as_transformers_does(model, directory: Path, is_t5: bool) -> None:
    """Save `model` as a user of transformers 5.24 would end up with it: `save_pretrained`, unedited.

    For T5 that is a Flan-T5 converted or fine-tuned with transformers 5.x: the hub's form (own `lm_head`,
    `tie_word_embeddings: false`) is loaded with `from_pretrained`, which unties the stored head, and saved again.
    transformers then writes `tie_word_embeddings: true` with `scale_decoder_outputs: false` and keeps
    `lm_head.weight`; the asserts below pin that form.
    """
    if not is_t5:
        model.save_pretrained(directory)
        return
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        untie_t5_head(Path(tmp), "language_model.", model.language_model.lm_head.weight)
        converted = Blip2ForConditionalGeneration.from_pretrained(tmp, attn_implementation="eager")
        converted.generation_config = model.generation_config
        converted.save_pretrained(directory)
    text = json.loads((directory / "config.json").read_text())["text_config"]
    stored = load_file(str(directory / "model.safetensors"))
    if (text.get("tie_word_embeddings") is not True or text.get("scale_decoder_outputs") is not False
            or "language_model.lm_head.weight" not in stored
            or torch.equal(stored["language_model.lm_head.weight"], stored["language_model.shared.weight"])):
        raise AssertionError("transformers no longer saves Flan-T5 in the form this fixture is about")


def head_variant_refs(refs: Refs, directory: Path, is_t5: bool, seed: int, logits_of) -> list[dict]:
    """Logits of the saved model with its config's head flags and its stored `lm_head.weight` varied as
    transformers writes or reads them: `tie_word_embeddings` absent/true/false, for T5 also `scale_decoder_outputs`
    absent/true/false, each with the head stored (values of its own) or absent. OPT with `tie_word_embeddings:
    false` and no stored head is left out: transformers initialises a random head there (blip2 refuses it)."""
    prefix = "language_model."
    head_key = prefix + "lm_head.weight"
    source_key = prefix + ("shared.weight" if is_t5 else "model.decoder.embed_tokens.weight")
    tensors = load_file(str(directory / "model.safetensors"))
    head = tensors.get(head_key)
    if head is None:
        g = torch.Generator().manual_seed(seed)
        shape = tensors[source_key].shape
        head = torch.randn(shape, generator=g) / np.sqrt(shape[1])
    refs.add("head/lm_head.weight", head, f"the {head_key} the head variants store (differs from {source_key})")
    variants = []
    for tie in ("absent", True, False):
        for scale in (("absent", True, False) if is_t5 else ("absent",)):
            for stored in (True, False):
                if not is_t5 and tie is False and not stored:
                    continue
                name = f"tie_{str(tie).lower()}/scale_{str(scale).lower()}/head_{'stored' if stored else 'absent'}"
                with tempfile.TemporaryDirectory() as tmp:
                    tmp = Path(tmp)
                    config = json.loads((directory / "config.json").read_text())
                    text = config["text_config"]
                    for key, value in (("tie_word_embeddings", tie), ("scale_decoder_outputs", scale)):
                        text.pop(key, None)
                        if value != "absent":
                            text[key] = value
                    write_json(tmp / "config.json", config)
                    variant = {k: v for k, v in tensors.items() if k != head_key}
                    if stored:
                        variant[head_key] = head.clone()
                    save_file(variant, str(tmp / "model.safetensors"), metadata={"format": "pt"})
                    m = Blip2ForConditionalGeneration.from_pretrained(tmp, attn_implementation="eager").eval()
                    lm = m.language_model
                    uses_stored = not (lm.lm_head.weight is lm.get_input_embeddings().weight)
                    if uses_stored != stored:
                        raise AssertionError(f"{name}: transformers no longer decides the head as documented")
                    scaled = bool(getattr(lm.config, "scale_decoder_outputs", False))
                    with torch.no_grad():
                        logits = logits_of(m)
                refs.add(f"head/{name}/logits", logits,
                         f"lm/logits/single with text_config tie_word_embeddings {tie}"
                         + (f", scale_decoder_outputs {scale}" if is_t5 else "")
                         + f", lm_head.weight {'= head/lm_head.weight' if stored else 'absent'}; transformers used "
                         f"{'the stored head' if stored else source_key}" + (f", scaled {scaled}" if is_t5 else ""))
                variants.append({"name": name, "tie_word_embeddings": tie, "scale_decoder_outputs": scale,
                                 "head_stored": stored, "embeddings_stored": True, "uses_stored_head": uses_stored,
                                 "scales_decoder_outputs": scaled if is_t5 else None})
    # The head stored without the input embeddings: transformers ties the other way round (`tie_weights` swaps
    # source and target), so the embeddings are the stored head.
    name = "embeddings_absent/head_stored"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy(directory / "config.json", tmp / "config.json")
        variant = {k: v for k, v in tensors.items() if k not in (head_key, source_key)}
        variant[head_key] = head.clone()
        save_file(variant, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        m = Blip2ForConditionalGeneration.from_pretrained(tmp, attn_implementation="eager").eval()
        lm = m.language_model
        if not torch.equal(lm.get_input_embeddings().weight, head):
            raise AssertionError(f"{name}: transformers no longer takes the embeddings from the stored head")
        with torch.no_grad():
            logits = logits_of(m)
    refs.add(f"head/{name}/logits", logits, f"lm/logits/single with {source_key} absent and lm_head.weight = "
             "head/lm_head.weight: transformers uses the stored head as the embeddings too")
    variants.append({"name": name, "tie_word_embeddings": "as saved", "scale_decoder_outputs": "as saved",
                     "head_stored": True, "embeddings_stored": False, "uses_stored_head": True,
                     "scales_decoder_outputs": bool(getattr(lm.config, "scale_decoder_outputs", False))
                     if is_t5 else None})
    return variants


def try_blip2_lm(model, processor, tokenizer, images, spec, is_t5):
    """Pick an extra eos token so that in the greedy batch row 0 stops early and row 1 runs to the end; reject
    seeds whose greedy margins are too small. Returns (eos_token, margin) or None."""
    stems = spec["images"]
    batch = processor(images=[load_image(images[s]) for s in stems], text=spec["prompts"]["batch"],
                      padding=True, return_tensors="pt")
    single = processor(images=load_image(images[stems[0]]), text=spec["prompts"]["single"], return_tensors="pt")
    model.generation_config = GenerationConfig(
        eos_token_id=None, pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=0 if is_t5 else None,
        bos_token_id=None if is_t5 else tokenizer.bos_token_id)
    margins = []
    with torch.no_grad():
        for enc in (single, batch):
            g = model.generate(pixel_values=enc["pixel_values"], input_ids=enc["input_ids"],
                               attention_mask=enc["attention_mask"], max_new_tokens=MAX_NEW_TOKENS,
                               do_sample=False, output_logits=True, return_dict_in_generate=True)
            margins.append(margin_ok(list(g.logits)))
        new = g.sequences if is_t5 else g.sequences[:, batch["input_ids"].shape[1]:]
    margin = min(margins)
    if margin < MIN_GREEDY_MARGIN:
        return None
    specials = set(tokenizer.all_special_ids) | {tokenizer.convert_tokens_to_ids("<image>"), 0}
    row0, row1 = new[0].tolist(), new[1].tolist()
    start = 1 if is_t5 else 0  # T5 sequences start with decoder_start_token_id
    for step in range(start + 2, start + 5):
        t = row0[step]
        if t not in specials and t not in row0[:step] and t not in row1:
            return t, margin
    return None


# ----------------------------------------------------------------------------------------------------------------
# Retrieval (tiny-itm)
# ----------------------------------------------------------------------------------------------------------------


def itm_fixture(out: Path, name: str, images: dict[str, Path], seed: int, spec: dict) -> None:
    directory = out / name
    directory.mkdir(parents=True)
    tokenizer = wordpiece_tokenizer()
    image_processor = BlipImageProcessorPil(
        size={"height": spec["image_size"], "width": spec["image_size"]}, resample=PILImageResampling.BICUBIC)
    processor = Blip2Processor(image_processor, tokenizer, num_query_tokens=spec["num_query_tokens"])
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    qformer_vocab = tokenizer.convert_tokens_to_ids("[DEC]") + 1  # `<image>` lies outside, as in the hub files
    config = Blip2Config(
        vision_config=Blip2VisionConfig(**spec["vision"], image_size=spec["image_size"]).to_dict(),
        qformer_config=Blip2QFormerConfig(vocab_size=qformer_vocab, use_qformer_text_input=True,
                                          **spec["qformer"]).to_dict(),
        num_query_tokens=spec["num_query_tokens"],
        image_text_hidden_size=spec["image_text_hidden_size"],
        image_token_index=image_token,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Blip2ForImageTextRetrieval(config).eval()
    init_weights(model, seed)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    if spec["legacy_processor_files"]:
        legacy_processor_files(directory, processor)

    model = Blip2ForImageTextRetrieval.from_pretrained(directory, attn_implementation="eager").eval()
    processor = Blip2Processor.from_pretrained(directory)
    tokenizer = processor.tokenizer
    texts = spec["texts"]
    check_tokenizer_file(directory, tokenizer, texts)

    refs = Refs()
    add_processor_refs(refs, processor, images)
    stems = spec["images"]
    enc = processor(images=[load_image(images[s]) for s in stems], text=texts, padding=True, return_tensors="pt")
    pixel_values = enc["pixel_values"]
    refs.add("pixel_values", pixel_values, f"processor output for images {stems}")
    refs.add("input_ids", enc["input_ids"], "processor input_ids: <image> x n, then [CLS] text [SEP], right-padded")
    refs.add("attention_mask", enc["attention_mask"], "processor attention_mask")
    add_vision_refs(refs, model.vision_model, pixel_values, "vision")
    with torch.no_grad():
        image_embeds = model.vision_model(pixel_values=pixel_values).last_hidden_state
    n = spec["num_query_tokens"]
    text_ids, text_mask = enc["input_ids"][:, n:], enc["attention_mask"][:, n:]
    refs.add("text/input_ids", text_ids, "the text part of input_ids (what the Q-Former text tower embeds)")
    refs.add("text/attention_mask", text_mask, "the text part of attention_mask")

    # ITM path: [queries; text] with cross-attention for the query rows.
    queries = model.query_tokens.expand(pixel_values.shape[0], -1, -1)
    with torch.no_grad():
        embeds = model.embeddings(input_ids=text_ids, query_embeds=queries)
    refs.add("itm/embeddings", embeds, "[query_tokens; word + position embeddings of the text]")
    itm_out = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=embeds, query_length=n, attention_mask=enc["attention_mask"],
                              encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)),
        "itm/qformer", "ITM path: queries + text reading the images")
    refs.add("itm/qformer/last_hidden_state", itm_out.last_hidden_state, "ITM path Q-Former last_hidden_state")
    refs.add("itm/qformer/pooler_output", itm_out.pooler_output, "ITM path Q-Former pooler_output")
    with torch.no_grad():
        itm = model(pixel_values=pixel_values, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    use_image_text_matching_head=True)
    refs.add("itm/logits", itm.logits_per_image, "ITM logits: itm_head on query rows, mean over queries [B, 2]")

    # ITC path: image side (queries only) and text side (text only, query_length 0).
    q_img = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=queries, encoder_hidden_states=image_embeds,
                              encoder_attention_mask=torch.ones(image_embeds.shape[:-1], dtype=torch.long)),
        "itc/image_qformer", "ITC image side: queries reading the images")
    refs.add("itc/image_qformer/last_hidden_state", q_img.last_hidden_state, "ITC image-side Q-Former output")
    with torch.no_grad():
        text_embeds_in = model.embeddings(input_ids=text_ids)
    refs.add("itc/text_embeddings", text_embeds_in, "text word + position embeddings (no LayerNorm of their own)")
    q_txt = add_qformer_refs(
        refs, model.qformer,
        lambda: model.qformer(query_embeds=text_embeds_in, query_length=0, attention_mask=text_mask),
        "itc/text_qformer", "ITC text side: text alone")
    refs.add("itc/text_qformer/last_hidden_state", q_txt.last_hidden_state, "ITC text-side Q-Former output")
    refs.add("itc/text_qformer/pooler_output", q_txt.pooler_output, "ITC text-side pooler (row 0)")
    with torch.no_grad():
        itc = model(pixel_values=pixel_values, input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                    use_image_text_matching_head=False)
    refs.add("itc/image_embeds", itc.image_embeds, "normalize(vision_projection(queries)) [B, n, D]")
    refs.add("itc/text_embeds", itc.text_embeds, "normalize(text_projection(text CLS row)) [B, D]")
    refs.add("itc/logits_per_image", itc.logits_per_image, "ITC: max over queries of the cosine [images, texts]")

    text_model = Blip2TextModelWithProjection.from_pretrained(directory, attn_implementation="eager").eval()
    vision_model = Blip2VisionModelWithProjection.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        t = text_model(input_ids=text_ids, attention_mask=text_mask)
        v = vision_model(pixel_values=pixel_values)
    refs.add("text_with_projection/text_embeds", t.text_embeds,
             "Blip2TextModelWithProjection: normalize(text_projection(every text row)) [B, L, D]")
    refs.add("vision_with_projection/image_embeds", v.image_embeds,
             "Blip2VisionModelWithProjection: normalize(vision_projection(queries)) [B, n, D]")

    meta = {
        "format_version": FORMAT_VERSION,
        "fixture": name,
        "what": "Blip2ForImageTextRetrieval (Q-Former text tower, use_qformer_text_input)",
        "versions": versions(),
        "seed": seed,
        "attn_implementation": "eager",
        "dtype": "float32",
        "images": {s: images[s].name for s in stems},
        "texts": texts,
        "image_token_index": image_token,
        "checkpoint_keys": file_keys(directory),
    }
    refs.save(directory, meta)


# ----------------------------------------------------------------------------------------------------------------
# Standalone LMs (tiny-opt-lm*, tiny-t5-lm*)
# ----------------------------------------------------------------------------------------------------------------


def lm_generation_refs(refs: Refs, model, enc_single, enc_batch, is_t5: bool) -> float:
    margins = []
    with torch.no_grad():
        for tag, enc in (("single", enc_single), ("batch", enc_batch)):
            g = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                               output_logits=True, return_dict_in_generate=True)
            margins.append(margin_ok(list(g.logits)))
            refs.add(f"gen/greedy/{tag}", g.sequences, "greedy ids as generate() returns them"
                     + ("" if is_t5 else " (prompt followed by new ids)"))
            refs.add(f"gen/greedy/{tag}/logits", torch.stack(g.logits), "raw logits per greedy step [step, B, V]")
            b = model.generate(**enc, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=NUM_BEAMS,
                               output_scores=True, return_dict_in_generate=True)
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}", b.sequences, f"{NUM_BEAMS}-beam ids")
            refs.add(f"gen/beam{NUM_BEAMS}/{tag}/scores", b.sequences_scores, "beam sequences_scores")
        refs.generation_variants = generation_variant_refs(refs, model, enc_batch, is_t5)
    return min(margins)


# Options of generate() beyond greedy / 3 beams, each run on the left-padded batch with more new tokens so that
# beams reach eos and the early-stopping modes part ways. The bad words are picked from the greedy output so
# that banning them changes it.
VARIANT_NEW_TOKENS = 12


def generation_variant_refs(refs: Refs, model, enc, is_t5: bool) -> dict:
    def new_ids(key: str) -> torch.Tensor:
        ids = refs.tensors[key]
        return ids[:, 1:] if is_t5 else ids[:, enc["input_ids"].shape[1]:]

    greedy, beams = new_ids("gen/greedy/batch"), new_ids(f"gen/beam{NUM_BEAMS}/batch")
    bad = [[int(greedy[0, 1])], [int(greedy[1, 2]), int(greedy[1, 3])]]
    # Two eos ids the beams meet early, so that hypotheses end at different steps and the stopping rules differ.
    eos = [int(beams[0, 2]), int(beams[1, 3])]
    processors = {"repetition_penalty": 1.3, "no_repeat_ngram_size": 2, "bad_words_ids": bad, "min_new_tokens": 4}
    variants = {
        "beam3_early_true": {"num_beams": 3, "early_stopping": True},
        "beam3_never_lp2": {"num_beams": 3, "early_stopping": "never", "length_penalty": 2.0},
        "beam3_lp0": {"num_beams": 3, "length_penalty": 0.0},
        "beam4_return3_lpneg": {"num_beams": 4, "num_return_sequences": 3, "length_penalty": -1.0},
        "greedy_processors": dict(processors),
        "beam3_processors": {"num_beams": 3, **processors},
        "greedy_max_length": {"max_new_tokens": None, "max_length": enc["input_ids"].shape[1] + 5},
        "beam3_eos_heuristic": {"num_beams": 3, "eos_token_id": eos},
        "beam3_eos_early_true": {"num_beams": 3, "eos_token_id": eos, "early_stopping": True},
        "beam3_eos_never_lp2": {"num_beams": 3, "eos_token_id": eos, "early_stopping": "never",
                                "length_penalty": 2.0},
        "beam3_eos_never_lpneg": {"num_beams": 3, "eos_token_id": eos, "early_stopping": "never",
                                  "length_penalty": -0.5},
        "greedy_eos": {"eos_token_id": eos},
    }
    meta = {}
    with torch.no_grad():
        for name, options in variants.items():
            kwargs = {"max_new_tokens": VARIANT_NEW_TOKENS, "do_sample": False, **options}
            if kwargs["max_new_tokens"] is None:
                del kwargs["max_new_tokens"]
            beams = kwargs.get("num_beams", 1) > 1
            out = model.generate(**enc, **kwargs, return_dict_in_generate=True, output_scores=True)
            refs.add(f"gen/variant/{name}", out.sequences, f"generate(**batch, {json.dumps(kwargs)})")
            if beams:
                refs.add(f"gen/variant/{name}/scores", out.sequences_scores, "their sequences_scores")
                meta[name] = {"kwargs": kwargs}
            else:
                meta[name] = {"kwargs": kwargs, "min_margin": margin_ok(list(out.scores))}
    return meta


def first_good_seed(name: str, directory: Path, seed: int, attempt) -> tuple[int, Refs, float]:
    """Runs `attempt(model_seed) -> (refs, min_greedy_margin)` with seed, seed + 1000, ... until the greedy margins
    are safe (see MIN_GREEDY_MARGIN), starting each try from an empty directory."""
    for k in range(20):
        model_seed = seed + 1000 * k
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        refs, margin = attempt(model_seed)
        if margin >= MIN_GREEDY_MARGIN:
            return model_seed, refs, margin
    raise RuntimeError(f"{name}: no seed gave greedy margins >= {MIN_GREEDY_MARGIN}")


def lm_meta(name: str, spec: dict, seed: int, model_seed: int, config, margin: float, directory: Path,
            refs: Refs) -> dict:
    generation = {"max_new_tokens": MAX_NEW_TOKENS, "num_beams": NUM_BEAMS, "eos_token_id": config.eos_token_id,
                  "pad_token_id": config.pad_token_id, "min_greedy_margin": margin,
                  "variants": refs.generation_variants}
    if config.is_encoder_decoder:
        generation["decoder_start_token_id"] = config.decoder_start_token_id
    return {"format_version": FORMAT_VERSION, "fixture": name, "what": spec["what"], "versions": versions(),
            "seed": seed, "model_seed": model_seed, "attn_implementation": "eager", "dtype": "float32",
            "prompts": spec["prompts"], "generation": generation, "checkpoint_keys": file_keys(directory)}


def opt_lm_fixture(out: Path, name: str, seed: int, spec: dict) -> None:
    directory = out / name
    tokenizer = bpe_tokenizer()
    config = OPTConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec["config"])
    config._attn_implementation = "eager"
    prompts = spec["prompts"]

    def attempt(model_seed: int) -> tuple[Refs, float]:
        torch.manual_seed(model_seed)
        model = OPTForCausalLM(config).eval()
        init_weights(model, model_seed)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(directory)
        model = OPTForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        check_tokenizer_file(directory, tok, prompts["batch"])
        single = tok(prompts["single"], return_tensors="pt")
        batch = tok(prompts["batch"], padding=True, return_tensors="pt")
        refs = Refs()
        for tag, enc in (("single", single), ("batch", batch)):
            refs.add(f"input_ids/{tag}", enc["input_ids"], f"tokenized {tag} prompt(s), BOS </s> prepended, "
                     "left-padded")
            refs.add(f"attention_mask/{tag}", enc["attention_mask"], f"attention mask ({tag})")
        store: dict[str, torch.Tensor] = {}
        decoder = model.model.decoder
        handles = hooks({f"layer.{i}": layer for i, layer in enumerate(decoder.layers)}, store)
        with torch.no_grad():
            out_single = model(**single)
            refs.add("logits/single", out_single.logits, "logits for every position of the single prompt")
            store.clear()
            labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
            out_batch = model(**batch, labels=labels)
        remove(handles)
        for i in range(len(decoder.layers)):
            refs.add(f"decoder/layer.{i}/batch", store[f"layer.{i}"], f"decoder layer {i} output (batch)")
        refs.add("logits/batch", out_batch.logits, "logits for the left-padded batch")
        refs.add("labels/batch", labels, "labels: input_ids with pads -> -100")
        refs.add("loss/batch", out_batch.loss.reshape(1), "HF causal-LM loss with labels/batch")
        return refs, lm_generation_refs(refs, model, single, batch, is_t5=False)

    model_seed, refs, margin = first_good_seed(name, directory, seed, attempt)
    refs.save(directory, lm_meta(name, spec, seed, model_seed, config, margin, directory, refs))


def t5_lm_fixture(out: Path, name: str, seed: int, spec: dict) -> None:
    directory = out / name
    tokenizer = unigram_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      **spec["config"])
    config._attn_implementation = "eager"
    prompts = spec["prompts"]

    def attempt(model_seed: int) -> tuple[Refs, float]:
        torch.manual_seed(model_seed)
        model = T5ForConditionalGeneration(config).eval()
        init_weights(model, model_seed)
        if not spec["tied"]:
            give_own_head(model, model_seed + 1)
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        GenerationConfig(decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
                         pad_token_id=config.pad_token_id).save_pretrained(directory)
        if not spec["tied"]:
            untie_t5_head(directory, "", model.lm_head.weight)
        model = T5ForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()
        if spec["tied"]:
            if not model.config.scale_decoder_outputs:
                raise AssertionError("the T5 v1.0 fixture must rescale its decoder output")
        else:
            check_untied(model)
        tok = PreTrainedTokenizerFast.from_pretrained(directory)
        check_tokenizer_file(directory, tok, prompts["batch"] + prompts["labels"])
        single = tok(prompts["single"], return_tensors="pt")
        batch = tok(prompts["batch"], padding=True, return_tensors="pt")
        targets = tok(prompts["labels"], padding=True, return_tensors="pt")
        labels = targets["input_ids"].masked_fill(targets["attention_mask"] == 0, -100)
        refs = Refs()
        for tag, enc in (("single", single), ("batch", batch)):
            refs.add(f"input_ids/{tag}", enc["input_ids"], f"tokenized {tag} prompt(s), </s> appended, right-padded")
            refs.add(f"attention_mask/{tag}", enc["attention_mask"], f"attention mask ({tag})")
        refs.add("labels/batch", labels, "labels (pads -> -100)")
        store: dict[str, torch.Tensor] = {}
        modules = {f"encoder/block.{i}": b for i, b in enumerate(model.encoder.block)}
        modules.update({f"decoder/block.{i}": b for i, b in enumerate(model.decoder.block)})
        with torch.no_grad():
            enc_single = model.get_encoder()(**single).last_hidden_state
            refs.add("encoder/last_hidden_state/single", enc_single, "encoder output, single prompt")
            handles = hooks(modules, store)
            out_batch = model(**batch, labels=labels)
            remove(handles)
        for key in sorted(store):
            refs.add(f"{key}/batch", store[key], f"{key} output (hidden states) for the batch")
        refs.add("encoder/last_hidden_state/batch", out_batch.encoder_last_hidden_state, "encoder output, batch")
        refs.add("decoder_input_ids/batch", model._shift_right(labels), "labels shifted right (start token 0)")
        refs.add("logits/batch", out_batch.logits, "teacher-forced decoder logits")
        refs.add("loss/batch", out_batch.loss.reshape(1), "HF loss with labels/batch")
        rel = torch.arange(-40, 41)
        nb, md = config.relative_attention_num_buckets, config.relative_attention_max_distance
        refs.add("bucket/relative_position", rel, "relative positions (key - query) for the bucket references")
        refs.add("bucket/bidirectional", T5Attention._relative_position_bucket(rel, True, nb, md),
                 f"encoder buckets (bidirectional, {nb} buckets, max distance {md})")
        refs.add("bucket/causal", T5Attention._relative_position_bucket(rel, False, nb, md),
                 f"decoder buckets (causal, {nb} buckets, max distance {md})")
        return refs, lm_generation_refs(refs, model, single, batch, is_t5=True)

    model_seed, refs, margin = first_good_seed(name, directory, seed, attempt)
    refs.save(directory, lm_meta(name, spec, seed, model_seed, config, margin, directory, refs))


# ----------------------------------------------------------------------------------------------------------------
# Logits processors on fixed random logits
# ----------------------------------------------------------------------------------------------------------------


def logits_processors_fixture(out: Path, seed: int) -> None:
    directory = out / "logits-processors"
    directory.mkdir(parents=True)
    g = torch.Generator().manual_seed(seed)
    vocab, batch, length = 40, 2, 10
    scores = torch.randn(batch, vocab, generator=g) * 2.0
    input_ids = torch.randint(10, 20, (batch, length), generator=g)
    input_ids[0, 2:4] = torch.tensor([11, 12])
    input_ids[0, 6:8] = torch.tensor([11, 12])  # a repeated bigram for no-repeat-ngram
    input_ids[1, 8] = 6  # [.., 6] then bad word [6, 7] bans 7
    input_ids[1, :2] = 1  # two left pads
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    attention_mask[1, :2] = 0
    eos = [3, 9]
    refs = Refs()
    refs.add("scores", scores, "raw logits [batch, vocab] that every processor below is applied to")
    refs.add("input_ids", input_ids, "ids so far [batch, len] (row 1 is left-padded by two pad ids 1)")
    refs.add("attention_mask", attention_mask, "attention mask of input_ids")
    refs.add("eos_token_id", torch.tensor(eos), "eos ids used by bad-words and min-length processors")
    pad_lengths = (attention_mask != 0).int().argmax(dim=1)
    cases = {
        "temperature/0.7": TemperatureLogitsWarper(0.7),
        "top_k/8": TopKLogitsWarper(8),
        "top_k/1": TopKLogitsWarper(1),
        "top_p/0.8": TopPLogitsWarper(0.8),
        "top_p/0.3/min_tokens_to_keep_2": TopPLogitsWarper(0.3, min_tokens_to_keep=2),
        "repetition_penalty/1.3": RepetitionPenaltyLogitsProcessor(1.3),
        "repetition_penalty/0.8": RepetitionPenaltyLogitsProcessor(0.8),
        "repetition_penalty/1.3/ignore_pads": RepetitionPenaltyLogitsProcessor(1.3,
                                                                               prompt_ignore_length=pad_lengths),
        "no_repeat_ngram/2": NoRepeatNGramLogitsProcessor(2),
        "no_repeat_ngram/3": NoRepeatNGramLogitsProcessor(3),
        "bad_words": NoBadWordsLogitsProcessor([[5], [6, 7]], eos_token_id=eos),
        "min_length/12": MinLengthLogitsProcessor(12, eos),
        "min_length/10": MinLengthLogitsProcessor(10, eos),
        "min_new_tokens/3_skip_8": MinNewTokensLengthLogitsProcessor(8, 3, eos),
    }
    descriptions = {
        "temperature/0.7": "TemperatureLogitsWarper(0.7)",
        "top_k/8": "TopKLogitsWarper(8): others -> -inf",
        "top_k/1": "TopKLogitsWarper(1)",
        "top_p/0.8": "TopPLogitsWarper(0.8)",
        "top_p/0.3/min_tokens_to_keep_2": "TopPLogitsWarper(0.3, min_tokens_to_keep=2)",
        "repetition_penalty/1.3": "RepetitionPenaltyLogitsProcessor(1.3) over all of input_ids",
        "repetition_penalty/0.8": "RepetitionPenaltyLogitsProcessor(0.8) (a reward)",
        "repetition_penalty/1.3/ignore_pads": "RepetitionPenaltyLogitsProcessor(1.3) ignoring the left pads, "
                                              "as generate() sets it up from the attention mask",
        "no_repeat_ngram/2": "NoRepeatNGramLogitsProcessor(2)",
        "no_repeat_ngram/3": "NoRepeatNGramLogitsProcessor(3)",
        "bad_words": "NoBadWordsLogitsProcessor([[5], [6, 7]])",
        "min_length/12": "MinLengthLogitsProcessor(12): length 10 < 12, eos ids -> -inf",
        "min_length/10": "MinLengthLogitsProcessor(10): length 10 reached, unchanged",
        "min_new_tokens/3_skip_8": "MinNewTokensLengthLogitsProcessor(prompt 8, min_new_tokens 3): 2 new < 3",
    }
    for key, proc in cases.items():
        refs.add(key, proc(input_ids.clone(), scores.clone()), descriptions[key])
    # The chain in the order GenerationMixin._get_logits_processor builds it (transformers 5.24) for
    # do_sample=True with every option below set.
    chain_order = ["repetition_penalty/1.3/ignore_pads", "no_repeat_ngram/2", "bad_words", "min_length/12",
                   "min_new_tokens/3_skip_8", "temperature/0.7", "top_k/8", "top_p/0.8"]
    s = scores.clone()
    for key in chain_order:
        s = cases[key](input_ids.clone(), s)
    refs.add("chain", s, "all of: " + " -> ".join(chain_order))
    meta = {"format_version": FORMAT_VERSION, "fixture": "logits-processors", "versions": versions(),
            "seed": seed, "chain_order": chain_order}
    refs.save(directory, meta)


# ----------------------------------------------------------------------------------------------------------------
# PIL pixel references: bicubic resizes, alpha compositing, how PIL opens and converts other kinds of files
# ----------------------------------------------------------------------------------------------------------------


def png_16bit(arr: np.ndarray, color_type: int) -> bytes:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit RGB, RGBA or LA): `arr` is [H, W, C] uint16."""
    import struct
    import zlib

    height, width = arr.shape[:2]
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b""))


def pil_image_fixture(out: Path, images: dict[str, Path], seed: int) -> None:
    """PIL's own pixels, for blip2-processor: `Image.resize(..., BICUBIC)` at many sizes (up, down, odd,
    non-square, 1 pixel, identity, large factors) of stored uint8 sources; `Image.alpha_composite` onto white
    for every (value, alpha) pair; CMYK -> RGB for every (ink, black) pair; and HF `convert_to_rgb` of files
    in modes the shared images do not cover, and of JPEGs of every kind (PIL decodes with libjpeg-turbo)."""
    from PIL import features
    from transformers.image_transforms import convert_to_rgb

    directory = out / "pil-image"
    directory.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    refs = Refs()

    y, x = np.mgrid[0:9, 0:16]
    checker = np.where((x + y) % 2 == 0, 255, 0).astype(np.uint8)
    sources = {
        "large_97x71": (np.array(load_image(images["large_97x71"]).convert("RGB")), "images/large_97x71.png"),
        # Full-range noise and a one-pixel checkerboard: the cubic's negative lobes overshoot, so both the
        # intermediate and the final clamp to 0..255 are reached.
        "noise_13x11": (rng.integers(0, 256, size=(11, 13, 3), dtype=np.uint8), "uniform random uint8"),
        "checker_16x9": (np.stack([checker, 255 - checker, checker], axis=-1), "0/255 checkerboard, 1 px cells"),
        "tall_11x41": (rng.integers(0, 256, size=(41, 11, 3), dtype=np.uint8), "uniform random uint8, tall"),
    }
    # Pillow 13 runs the vertical pass first when the height shrinks by more than twice as many pixels as the
    # width (python-pillow/Pillow#9549); the intermediate uint8 rounding makes the order visible. Sizes on
    # both sides of that rule and at its boundary (equality: horizontal first):
    targets = {
        "large_97x71": [(5, 5), (1, 1), (97, 71), (224, 224), (13, 71), (97, 13), (31, 17), (1, 71), (97, 1),
                        (3, 50), (200, 150), (30, 30), (48, 35), (90, 50), (92, 61), (92, 60)],
        "noise_13x11": [(37, 29), (5, 4), (1, 1), (26, 22), (12, 11), (13, 10), (2, 30), (14, 12)],
        "checker_16x9": [(7, 5), (33, 19), (16, 4), (5, 9), (3, 2)],
        "tall_11x41": [(30, 30), (9, 20), (5, 40), (6, 31), (7, 32), (11, 5), (3, 41), (24, 24)],
    }
    for name, (array, what) in sources.items():
        refs.add(f"source/{name}", array, f"resize source, HWC uint8: {what}")
        image = Image.fromarray(array, "RGB")
        for width, height in targets[name]:
            resized = image.resize((width, height), resample=Image.Resampling.BICUBIC, reducing_gap=None)
            refs.add(f"resize/{name}/{width}x{height}", np.array(resized),
                     f"PIL Image.resize(({width}, {height}), BICUBIC, reducing_gap=None) of source/{name}, HWC uint8")

    # Every (value, alpha) pair: value varies along x, alpha along y; the red channel after convert_to_rgb.
    value, alpha = np.mgrid[0:256, 0:256][::-1].astype(np.uint8)
    rgba = np.stack([value, 255 - value, value, alpha], axis=-1)
    over_white = convert_to_rgb(Image.fromarray(rgba, "RGBA"), return_numpy=True)
    refs.add("alpha/over_white", over_white[..., 0],
             "HF convert_to_rgb (PIL alpha_composite onto white) of value x (column) with alpha y (row): red channel")

    # Every (ink, black) pair of mode CMYK: ink varies along x (as C and Y, 255 - ink as M), black along y.
    ink, black = np.mgrid[0:256, 0:256][::-1].astype(np.uint8)
    cmyk = np.stack([ink, 255 - ink, ink, black], axis=-1)
    cmyk_rgb = convert_to_rgb(Image.fromarray(cmyk, "CMYK"), return_numpy=True)
    refs.add("cmyk/to_rgb", cmyk_rgb[..., 0],
             "HF convert_to_rgb (PIL CMYK -> RGB) of C = M' = Y = x (column), K = y (row): red channel")

    # Files in modes the shared images do not cover, and HF convert_to_rgb of what PIL opens.
    pattern = (rng.random((7, 13, 4)) * 65536).astype(np.uint16)
    pattern[0, :4] = [0, 255, 256, 65535]
    files = {}
    for stem, color_type, channels in [("rgb16_13x7", 2, 3), ("rgba16_13x7", 6, 4), ("la16_13x7", 4, 2)]:
        files[stem + ".png"] = png_16bit(pattern[..., :channels], color_type)
    small = (rng.random((9, 11, 3)) * 256).astype(np.uint8)
    small[2, 3] = small[5, 7] = (10, 20, 30)
    keyed = Image.fromarray(small, "RGB")
    gray = Image.fromarray(small[..., 0], "L")
    palette = Image.fromarray(small, "RGB").quantize(colors=8, dither=Image.Dither.NONE)
    frames = [Image.fromarray(small, "RGB").quantize(colors=8, dither=Image.Dither.NONE),
              Image.fromarray(255 - small, "RGB").quantize(colors=8, dither=Image.Dither.NONE)]
    rgba8 = np.concatenate([small, (small[..., :1] // 2 + 60)], axis=-1)
    rgba8[0, :] = 0
    savers = {
        "rgb_key_11x9.png": lambda f: keyed.save(f, "PNG", transparency=(10, 20, 30)),
        "gray_key_11x9.png": lambda f: gray.save(f, "PNG", transparency=int(small[5, 7, 0])),
        "palette_alpha_11x9.png": lambda f: palette.save(f, "PNG", transparency=bytes([0, 64, 128, 200, 255, 255, 30, 90])),
        "bilevel_11x9.png": lambda f: gray.convert("1", dither=Image.Dither.NONE).save(f, "PNG"),
        "anim_11x9.gif": lambda f: frames[0].save(f, "GIF", save_all=True, append_images=frames[1:], transparency=2,
                                                  duration=100, loop=0),
        "rgba_11x9.webp": lambda f: Image.fromarray(rgba8, "RGBA").save(f, "WEBP", lossless=True),
        "rgb_11x9.bmp": lambda f: keyed.save(f, "BMP"),
        "rgba_11x9.tiff": lambda f: Image.fromarray(rgba8, "RGBA").save(f, "TIFF"),
    }
    for name, save in savers.items():
        buffer = io.BytesIO()
        save(buffer)
        files[name] = buffer.getvalue()

    # JPEGs as Pillow writes them, one of each kind a decoder handles differently: gray, chroma 4:2:0 (Pillow's
    # default), 4:2:2 and 4:4:4, RGB stored without YCbCr (keep_rgb), progressive colour and gray, restart
    # intervals, CMYK (PIL reads it Adobe-inverted), an EXIF orientation (neither PIL nor HF applies it), sizes
    # that are not a multiple of the 8 or 16 pixel MCU, and two damaged scans followed by the end marker
    # (libjpeg warns and fills what it cannot decode; PIL ignores the warnings and returns those pixels).
    def photo(h: int, w: int, channels: int) -> np.ndarray:
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        planes = [x / (w - 1), y / (h - 1), 0.5 + 0.5 * np.sin(x / 2.3 + y / 3.1), 0.5 + 0.4 * np.cos(x / 3.7 - y / 1.9)]
        img = np.stack(planes[:channels], axis=-1) + rng.normal(0.0, 0.1, size=(h, w, channels))
        return np.clip(np.round(img * 255), 0, 255).astype(np.uint8)

    def jpeg(image: Image.Image, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", **options)
        return buffer.getvalue()

    def middle_of_scan(data: bytes) -> int:
        sos = data.rfind(b"\xff\xda")
        start = sos + 2 + int.from_bytes(data[sos + 2:sos + 4], "big")
        return (start + len(data) - 2) // 2

    orientation = Image.Exif()
    orientation[0x0112] = 6  # "rotate 90 CW to display"
    restart = jpeg(Image.fromarray(photo(25, 33, 3), "RGB"), quality=90, restart_marker_blocks=2)
    cut_scan = jpeg(Image.fromarray(photo(23, 31, 3), "RGB"), quality=90)
    files.update({
        "gray_13x11.jpg": jpeg(Image.fromarray(photo(11, 13, 1)[..., 0], "L"), quality=85),
        "gray_progressive_21x13.jpg": jpeg(Image.fromarray(photo(13, 21, 1)[..., 0], "L"), quality=80,
                                           progressive=True),
        "yuv420_17x9.jpg": jpeg(Image.fromarray(photo(9, 17, 3), "RGB"), quality=90),
        "yuv420_97x71.jpg": jpeg(Image.fromarray(sources["large_97x71"][0], "RGB"), quality=75),
        "yuv422_23x15.jpg": jpeg(Image.fromarray(photo(15, 23, 3), "RGB"), quality=90, subsampling="4:2:2"),
        "yuv444_13x11.jpg": jpeg(Image.fromarray(photo(11, 13, 3), "RGB"), quality=90, subsampling="4:4:4"),
        "rgb_11x9.jpg": jpeg(Image.fromarray(photo(9, 11, 3), "RGB"), quality=90, keep_rgb=True),
        "progressive_29x21.jpg": jpeg(Image.fromarray(photo(21, 29, 3), "RGB"), quality=80, progressive=True),
        "restart_33x25.jpg": restart,
        "cmyk_15x13.jpg": jpeg(Image.fromarray(photo(13, 15, 4), "CMYK"), quality=90),
        "exif_rotated_13x11.jpg": jpeg(Image.fromarray(photo(11, 13, 3), "RGB"), quality=90,
                                       exif=orientation.tobytes()),
        # The scan cut in the middle and the end marker written after it: "premature end of data segment".
        "cut_scan_31x23.jpg": cut_scan[:middle_of_scan(cut_scan)] + b"\xff\xd9",
        # 40 bytes taken out of the middle of the scan: "bad Huffman code", resynchronised at a restart marker.
        "damaged_restart_33x25.jpg": restart[:middle_of_scan(restart)] + restart[middle_of_scan(restart) + 40:],
    })
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        image = load_image(path)
        refs.add(f"rgb/{name}", convert_to_rgb(image, return_numpy=True),
                 f"HF convert_to_rgb of pil-image/{name} as PIL opens it (mode {image.mode}), HWC uint8")

    meta = {"format_version": FORMAT_VERSION, "fixture": "pil-image", "versions": versions(), "seed": seed,
            "libjpeg_turbo": features.version("libjpeg_turbo"), "files": sorted(files)}
    refs.save(directory, meta)


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


def generate_all(out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    images = make_images(out / "images")
    blip2_lm_fixture(out, "tiny-opt", images, SEED + 10, TINY_OPT)
    blip2_lm_fixture(out, "tiny-t5", images, SEED + 20, TINY_T5)
    blip2_lm_fixture(out, "tiny-opt-saved", images, SEED + 110, TINY_OPT_SAVED)
    blip2_lm_fixture(out, "tiny-t5-saved", images, SEED + 120, TINY_T5_SAVED)
    blip2_lm_fixture(out, "tiny-opt-q8", images, SEED + 130, TINY_OPT_Q8)
    itm_fixture(out, "tiny-itm", images, SEED + 30, TINY_ITM)
    opt_lm_fixture(out, "tiny-opt-lm", SEED + 40, TINY_OPT_LM)
    opt_lm_fixture(out, "tiny-opt-lm-350m", SEED + 50, TINY_OPT_LM_350M)
    t5_lm_fixture(out, "tiny-t5-lm", SEED + 60, TINY_T5_LM)
    t5_lm_fixture(out, "tiny-t5-lm-v1", SEED + 70, TINY_T5_LM_V1)
    logits_processors_fixture(out, SEED + 80)
    pil_image_fixture(out, images, SEED + 90)
    real_key_sets(out)
    write_manifest(out)


def write_manifest(out: Path) -> None:
    """MANIFEST.json: every file under `out` with its SHA-256."""
    manifest = out / "MANIFEST.json"
    files = sorted(p for p in out.rglob("*") if p.is_file() and p != manifest)
    write_json(manifest, {
        "format_version": FORMAT_VERSION,
        "generator": "scripts/make_fixtures.py",
        "versions": versions(),
        "files": {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files},
    })


# torch's CPU kernels take other code paths on other processors (the project's machines: Intel Xeons with
# AVX-512/AMX, AMD Zen 4s): a generation on a Xeon and the fixtures committed from another machine have the same
# weights, ids, pixels and configs, and float references apart by up to 6.1e-5 (tiny-t5-lm-v1's logits, every
# other key closer). Two generations on
# one machine are compared bit for bit; a fresh generation and the committed fixtures, which may come from another
# processor, with this tolerance on float32 tensors and on the floats in reference.json (greedy margins moved by
# up to 3e-6), and exactly for everything else.
CROSS_CPU_ATOL = 1e-4
CROSS_CPU_RTOL = 1e-5


def close_json(x, y) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        return abs(x - y) <= CROSS_CPU_ATOL + CROSS_CPU_RTOL * abs(y)
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(close_json(x[k], y[k]) for k in x)
    if isinstance(x, list) and isinstance(y, list):
        return len(x) == len(y) and all(close_json(a, b) for a, b in zip(x, y))
    return x == y


def close_references(a: Path, b: Path) -> str | None:
    """None when two reference.safetensors files agree (floats within the cross-CPU tolerance), else why not."""
    x, y = load_file(str(a)), load_file(str(b))
    if x.keys() != y.keys():
        return f"keys differ: {sorted(x.keys() ^ y.keys())}"
    for key in sorted(x):
        if x[key].dtype != y[key].dtype or x[key].shape != y[key].shape:
            return f"{key}: {x[key].dtype} {list(x[key].shape)} vs {y[key].dtype} {list(y[key].shape)}"
        if not x[key].dtype.is_floating_point:
            if not torch.equal(x[key], y[key]):
                return f"{key} differs"
        elif not torch.allclose(x[key], y[key], rtol=CROSS_CPU_RTOL, atol=CROSS_CPU_ATOL):
            diff = (x[key] - y[key]).abs().max().item()
            return f"{key} differs by up to {diff:.3g}"
    return None


def compare_trees(a: Path, b: Path, exact: bool = True) -> list[str]:
    """Differences between two fixture trees: bit for bit when `exact`, else with the cross-CPU tolerance on float
    references (MANIFEST.json then compared by its file list: the hashes of such files differ)."""
    problems = []
    fa = {str(p.relative_to(a)) for p in a.rglob("*") if p.is_file()}
    fb = {str(p.relative_to(b)) for p in b.rglob("*") if p.is_file()}
    for only in sorted(fa - fb):
        problems.append(f"only in {a}: {only}")
    for only in sorted(fb - fa):
        problems.append(f"only in {b}: {only}")
    for rel in sorted(fa & fb):
        if filecmp.cmp(a / rel, b / rel, shallow=False):
            continue
        if not exact:
            name = Path(rel).name
            if name == "reference.safetensors":
                why = close_references(a / rel, b / rel)
                if why is None:
                    continue
                problems.append(f"differs: {rel}: {why}")
                continue
            if name in ("reference.json", "MANIFEST.json"):
                x, y = (json.loads((t / rel).read_text()) for t in (a, b))
                if name == "MANIFEST.json":
                    x["files"], y["files"] = sorted(x["files"]), sorted(y["files"])
                if close_json(x, y):
                    continue
        problems.append(f"differs: {rel}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="the fixtures directory")
    parser.add_argument("--check", action="store_true",
                        help="generate twice into temporary directories; compare them with each other and with --out")
    args = parser.parse_args()
    if not args.check:
        generate_all(args.out)
        total = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
        print(f"wrote {args.out} ({total / 1e6:.2f} MB)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        first, second = Path(tmp) / "first", Path(tmp) / "second"
        generate_all(first)
        generate_all(second)
        problems = compare_trees(first, second)
        if problems:
            print("NOT deterministic: two generations differ:\n  " + "\n  ".join(problems))
            return 1
        print("deterministic: two generations are identical, bit for bit")
        problems = compare_trees(first, args.out, exact=False)
        if problems:
            print(f"{args.out} differs from a fresh generation:\n  " + "\n  ".join(problems))
            return 1
        print(f"{args.out} equals a fresh generation (float references within {CROSS_CPU_ATOL:g} when made on "
              "another processor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

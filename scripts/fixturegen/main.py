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
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from .common import FORMAT_VERSION, SEED, versions, write_json
from .processor import make_images, pil_image_fixture
from .blip2 import blip2_lm_fixture
from .itm import itm_fixture
from .lm import opt_lm_fixture, t5_lm_fixture
from .generation import logits_processors_fixture
from .keys import real_key_sets
from .specs import (
    TINY_ITM,
    TINY_OPT,
    TINY_OPT_LM,
    TINY_OPT_LM_350M,
    TINY_OPT_Q8,
    TINY_OPT_SAVED,
    TINY_T5,
    TINY_T5_LM,
    TINY_T5_LM_V1,
    TINY_T5_SAVED,
)


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

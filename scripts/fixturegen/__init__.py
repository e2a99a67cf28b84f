"""blip2's fixture generator: tiny random-weight models run through HF transformers, their references saved for the
Rust tests. The entry point is `scripts/make_fixtures.py` (through `cargo xtask fixtures [--check]`); `main` holds
the command line, `specs` the fixtures' sizes, and each other module one family of fixtures or shared pieces.

Importing the package fixes what determinism needs before torch and tokenizers start: one thread everywhere,
deterministic algorithms, no hub access.
"""

import os

# Determinism: one thread everywhere, before torch/tokenizers start their pools.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

#!/usr/bin/env python3
"""Generate blip2's reference fixtures with HF transformers (the reference implementation).

    python scripts/make_fixtures.py --out fixtures            # (re)generate
    python scripts/make_fixtures.py --out fixtures --check    # generate twice, compare bit for bit with each
                                                              # other and with what is in --out

Run it through `cargo xtask fixtures [--check]`, which makes the pinned venv (scripts/requirements.txt). The
generator itself is the package next to this file, `scripts/fixturegen/` (one module per family of fixtures).
"""

import sys

from fixturegen.main import main

if __name__ == "__main__":
    sys.exit(main())

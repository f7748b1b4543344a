#!/usr/bin/env python3
"""Writes tests/fixtures/encoders/: small random image encoders in the checkpoint formats qformer
reads, and the features Hugging Face `transformers` computes from them on fixed images.

- `clip.safetensors`: a 3-layer `CLIPVisionModel`; the expected features are its penultimate
  layer (hidden_states[2]), which is what LAVIS's `clip_L` feeds the Q-Former.
- `eva_hf.safetensors`: a 2-layer `Blip2VisionModel` (EVA shape), features = hidden_states[2]
  (before `post_layernorm`, which is the Q-Former's trainable `ln_vision`).
- `eva_lavis.pth`: the same EVA weights under LAVIS names (`visual_encoder.blocks.N.attn.q_bias`...)
  inside `{"model": ...}`, as `blip2_pretrained.pth` stores them.
- At 48 px (grid 6 instead of 4) the reference interpolates the position table bicubically
  (PyTorch `interpolate`, align_corners=False) as LAVIS does, and runs a model built at 48 px.

Every parameter is drawn at random (not HF's zero biases / unit norms) so that each one matters.

    /path/to/venv/bin/python tools/make_encoder_fixtures.py
"""
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import Blip2VisionConfig, Blip2VisionModel, CLIPVisionConfig, CLIPVisionModel

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "encoders")
W, HEADS, PATCH = 32, 4, 8


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            scale = 0.3 if p.dim() > 1 else 0.1
            base = 1.0 if "norm" in name and name.endswith("weight") else 0.0
            p.copy_(base + scale * torch.randn(p.shape, generator=g))


def interpolate(pos, old, new):
    """[1 + old², W] → [1 + new², W], LAVIS's bicubic resize of the grid part."""
    cls, grid = pos[:1], pos[1:]
    grid = grid.reshape(1, old, old, W).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new, new), mode="bicubic", align_corners=False)
    return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(new * new, W)])


def features(model, pixels, layer):
    with torch.no_grad():
        return model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer].contiguous()


def main():
    os.makedirs(OUT, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    pixels = {s: torch.randn(2, 3, s, s, generator=g) for s in (32, 48)}
    expected = {f"pixels_{s}": p for s, p in pixels.items()}

    clip_cfg = dict(hidden_size=W, intermediate_size=4 * W, num_hidden_layers=3, num_attention_heads=HEADS, patch_size=PATCH, hidden_act="quick_gelu", layer_norm_eps=1e-5)
    clip = CLIPVisionModel(CLIPVisionConfig(image_size=32, **clip_cfg)).eval()
    randomise(clip, 1)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items() if "position_ids" not in k}, os.path.join(OUT, "clip.safetensors"), metadata={"format": "pt"})
    expected["clip_32"] = features(clip, pixels[32], 2)
    clip48 = CLIPVisionModel(CLIPVisionConfig(image_size=48, **clip_cfg)).eval()
    state = {k: v for k, v in clip.state_dict().items() if "position_ids" not in k}
    key = "vision_model.embeddings.position_embedding.weight"
    state[key] = interpolate(state[key], 4, 6)
    clip48.load_state_dict(state, strict=False)
    expected["clip_48"] = features(clip48, pixels[48], 2)

    eva_cfg = dict(hidden_size=W, intermediate_size=4 * W, num_hidden_layers=2, num_attention_heads=HEADS, patch_size=PATCH, qkv_bias=True, layer_norm_eps=1e-6, hidden_act="gelu")
    eva = Blip2VisionModel(Blip2VisionConfig(image_size=32, **eva_cfg)).eval()
    randomise(eva, 2)
    with torch.no_grad():  # EVA has no key bias: zero it so the LAVIS form holds the same model
        for layer in eva.encoder.layers:
            layer.self_attn.qkv.bias[W:2 * W] = 0.0
    state = {k: v.contiguous() for k, v in eva.state_dict().items()}
    save_file(state, os.path.join(OUT, "eva_hf.safetensors"), metadata={"format": "pt"})
    lavis = {
        "visual_encoder.cls_token": state["embeddings.class_embedding"],
        "visual_encoder.pos_embed": state["embeddings.position_embedding"],
        "visual_encoder.patch_embed.proj.weight": state["embeddings.patch_embedding.weight"],
        "visual_encoder.patch_embed.proj.bias": state["embeddings.patch_embedding.bias"],
        "ln_vision.weight": state["post_layernorm.weight"],
        "ln_vision.bias": state["post_layernorm.bias"],
    }
    for i in range(2):
        h, b = f"encoder.layers.{i}.", f"visual_encoder.blocks.{i}."
        bias = state[h + "self_attn.qkv.bias"]
        lavis.update({
            b + "norm1.weight": state[h + "layer_norm1.weight"], b + "norm1.bias": state[h + "layer_norm1.bias"],
            b + "attn.qkv.weight": state[h + "self_attn.qkv.weight"], b + "attn.q_bias": bias[:W].clone(), b + "attn.v_bias": bias[2 * W:].clone(),
            b + "attn.proj.weight": state[h + "self_attn.projection.weight"], b + "attn.proj.bias": state[h + "self_attn.projection.bias"],
            b + "norm2.weight": state[h + "layer_norm2.weight"], b + "norm2.bias": state[h + "layer_norm2.bias"],
            b + "mlp.fc1.weight": state[h + "mlp.fc1.weight"], b + "mlp.fc1.bias": state[h + "mlp.fc1.bias"],
            b + "mlp.fc2.weight": state[h + "mlp.fc2.weight"], b + "mlp.fc2.bias": state[h + "mlp.fc2.bias"],
        })
    torch.save({"model": lavis, "epoch": 3}, os.path.join(OUT, "eva_lavis.pth"))
    expected["eva_32"] = features(eva, pixels[32], 2)
    eva48 = Blip2VisionModel(Blip2VisionConfig(image_size=48, **eva_cfg)).eval()
    state48 = dict(state)
    state48["embeddings.position_embedding"] = interpolate(state["embeddings.position_embedding"][0], 4, 6)[None]
    eva48.load_state_dict(state48)
    expected["eva_48"] = features(eva48, pixels[48], 2)
    expected["eva_32_depth1"] = features(eva, pixels[32], 1)

    save_file({k: v.contiguous() for k, v in expected.items()}, os.path.join(OUT, "expected.safetensors"))
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Writes the parity fixtures under tests/fixtures/ from an independent reference.

The trunk is Hugging Face `transformers`' `Blip2QFormerModel`; the embeddings, heads and the three
stage-one losses are written here with PyTorch from the LAVIS semantics (four passes: queries
only, text only, ITM pairs, and ITG as one pass with the explicit prefix-causal mask, which equals
LAVIS's cached-key form). Everything is computed in float64 from float32 weights, so the expected
values are exact for the stored inputs.

    python3 -m venv .venv && .venv/bin/pip install torch transformers==4.46.3 safetensors
    .venv/bin/python tools/make_fixtures.py
"""
import json
import math
import os

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import save_file
from transformers import Blip2QFormerConfig, Blip2QFormerModel

# transformers 4 expands a [B, S, S] 0/1 mask itself; 5 takes a prepared [B, 1, S, S] one as is
# (boolean, attend where true, as its SDPA attention builds them).
TRANSFORMERS_5 = int(transformers.__version__.split(".")[0]) >= 5

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
PAD, CLS, SEP = 0, 2, 3

SHAPES = {
    # Cross-attention in every layer; one caption per image.
    "xattn_every_layer": dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        cross_attention_frequency=1, encoder_hidden_size=24, vocab_size=64, max_position_embeddings=16,
        num_query_tokens=4, image_text_hidden_size=16, batch=3, text_len=7, image_tokens=5,
        image_ids=None, seed=1,
    ),
    # Cross-attention every 2 layers; samples 0 and 2 are two captions of one image.
    "xattn_every_2_image_ids": dict(
        hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=80,
        cross_attention_frequency=2, encoder_hidden_size=40, vocab_size=80, max_position_embeddings=16,
        num_query_tokens=6, image_text_hidden_size=24, batch=4, text_len=9, image_tokens=7,
        image_ids=[10, 11, 10, 12], seed=2,
    ),
}


def perturb(name, p, gen):
    """Random values everywhere, so that a swapped, transposed or ignored tensor shows."""
    with torch.no_grad():
        if name.endswith("LayerNorm.weight") or name.endswith("layernorm.weight") or name == "ln_vision.weight":
            p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
        elif p.dim() == 1:
            p.copy_(0.2 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))


def build(s, gen, dtype=torch.float64, dropout=0.0):
    """The reference model: HF's trunk plus every other tensor, random. Fixtures use float64
    (from float32 values) and no dropout; tools/bench_torch.py uses float32 and dropout 0.1."""
    V, D, Dv, Q, E = s["vocab_size"], s["hidden_size"], s["encoder_hidden_size"], s["num_query_tokens"], s["image_text_hidden_size"]
    qcfg = Blip2QFormerConfig(
        vocab_size=V, hidden_size=D, num_hidden_layers=s["num_hidden_layers"],
        num_attention_heads=s["num_attention_heads"], intermediate_size=s["intermediate_size"],
        cross_attention_frequency=s["cross_attention_frequency"], encoder_hidden_size=Dv,
        max_position_embeddings=s["max_position_embeddings"], layer_norm_eps=1e-12,
        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, use_qformer_text_input=True,
    )
    trunk = Blip2QFormerModel(qcfg).eval()
    params = {f"qformer.{k}": v for k, v in trunk.named_parameters()}
    extra = {
        "query_tokens": torch.nn.Parameter(torch.empty(1, Q, D)),
        "temp": torch.nn.Parameter(torch.tensor(0.07)),
        "embeddings.word_embeddings.weight": torch.nn.Parameter(torch.empty(V, D)),
        "embeddings.position_embeddings.weight": torch.nn.Parameter(torch.empty(s["max_position_embeddings"], D)),
        "ln_vision.weight": torch.nn.Parameter(torch.empty(Dv)),
        "ln_vision.bias": torch.nn.Parameter(torch.empty(Dv)),
        "vision_proj.weight": torch.nn.Parameter(torch.empty(E, D)),
        "vision_proj.bias": torch.nn.Parameter(torch.empty(E)),
        "text_proj.weight": torch.nn.Parameter(torch.empty(E, D)),
        "text_proj.bias": torch.nn.Parameter(torch.empty(E)),
        "itm_head.weight": torch.nn.Parameter(torch.empty(2, D)),
        "itm_head.bias": torch.nn.Parameter(torch.empty(2)),
        "lm_head.bias": torch.nn.Parameter(torch.empty(V)),
        "lm_head.transform.dense.weight": torch.nn.Parameter(torch.empty(D, D)),
        "lm_head.transform.dense.bias": torch.nn.Parameter(torch.empty(D)),
        "lm_head.transform.LayerNorm.weight": torch.nn.Parameter(torch.empty(D)),
        "lm_head.transform.LayerNorm.bias": torch.nn.Parameter(torch.empty(D)),
    }
    params.update(extra)
    for name, p in params.items():
        if name != "temp":
            perturb(name, p, gen)
    # Round to float32 (what the file holds), then compute in `dtype`.
    with torch.no_grad():
        for p in params.values():
            p.copy_(p.float())
    trunk.to(dtype)
    for p in extra.values():
        p.data = p.data.to(dtype)
    params = {f"qformer.{k}": v for k, v in trunk.named_parameters()}
    params.update(extra)
    return trunk, params


def stage1(trunk, P, batch, s, itc_full=False, objectives=("itc", "itm", "itg")):
    """LAVIS's stage-one losses, computing only what `objectives` need. ITM negatives come from
    the batch (`neg_image_idx`, `neg_text_idx`) or, when it has none, are sampled as LAVIS does
    from the softmax of the detached similarities with positives excluded."""
    feats, ids, mask = batch["image_feats"].to(P["ln_vision.weight"].dtype), batch["input_ids"], batch["attention_mask"]
    B, T = ids.shape
    Q, V = s["num_query_tokens"], s["vocab_size"]
    bos = V - 1

    def text_embed(x):
        return P["embeddings.word_embeddings.weight"][x] + P["embeddings.position_embeddings.weight"][: x.shape[1]][None]

    def linear(x, name):
        return x @ P[f"{name}.weight"].T + P[f"{name}.bias"]

    img = F.layer_norm(feats, (feats.shape[-1],), P["ln_vision.weight"], P["ln_vision.bias"], eps=1e-5)
    queries = P["query_tokens"].expand(B, -1, -1)
    out = {}

    iid = torch.tensor(s["image_ids"]) if s["image_ids"] is not None else torch.arange(B)
    pos = (iid[:, None] == iid[None, :]).to(img.dtype)
    if "itc" in objectives or "itm" in objectives:
        # Pass A (queries and image) and pass B (text alone).
        qo = trunk(query_embeds=queries, query_length=Q, encoder_hidden_states=img).last_hidden_state
        to = trunk(query_embeds=text_embed(ids), query_length=0, attention_mask=mask).last_hidden_state
        z = F.normalize(linear(qo, "vision_proj"), dim=-1)
        t = F.normalize(linear(to[:, 0], "text_proj"), dim=-1)
        z_all, t_all = (z, t) if itc_full else (z.detach(), t.detach())
        sim_i2t = torch.einsum("bqe,ne->bnq", z, t_all).max(-1).values / P["temp"]
        sim_t2i = torch.einsum("be,nqe->bnq", t, z_all).max(-1).values / P["temp"]
        if s["image_ids"] is None:
            target = torch.arange(B)
            loss_itc = (F.cross_entropy(sim_i2t, target, label_smoothing=0.1) + F.cross_entropy(sim_t2i, target, label_smoothing=0.1)) / 2
        else:
            tgt = 0.9 * pos / pos.sum(1, keepdim=True) + 0.1 / B
            loss_itc = (-(F.log_softmax(sim_i2t, 1) * tgt).sum(1).mean() - (F.log_softmax(sim_t2i, 1) * tgt).sum(1).mean()) / 2
        out["loss_itc"], out["sim_i2t"] = loss_itc, sim_i2t

    # ITM: texts [pos; pos; neg], images [pos; neg; pos].
    if "itm" in objectives:
        if "neg_image_idx" in batch:
            ni, nt = batch["neg_image_idx"], batch["neg_text_idx"]
        else:
            with torch.no_grad():
                ni = torch.multinomial(F.softmax(sim_t2i, 1) * (1 - pos) + 1e-12 * (1 - pos), 1).squeeze(1)
                nt = torch.multinomial(F.softmax(sim_i2t, 1) * (1 - pos) + 1e-12 * (1 - pos), 1).squeeze(1)
        ids_all = torch.cat([ids, ids, ids[nt]])
        mask_all = torch.cat([mask, mask, mask[nt]])
        img_all = torch.cat([img, img[ni], img])
        emb = torch.cat([P["query_tokens"].expand(3 * B, -1, -1), text_embed(ids_all)], 1)
        att = torch.cat([torch.ones(3 * B, Q, dtype=mask.dtype), mask_all], 1)
        h = trunk(query_embeds=emb, query_length=Q, attention_mask=att, encoder_hidden_states=img_all).last_hidden_state
        itm_logits = linear(h[:, :Q], "itm_head").mean(1)
        labels = torch.cat([torch.ones(B, dtype=torch.long), torch.zeros(2 * B, dtype=torch.long)])
        out["loss_itm"], out["itm_logits"] = F.cross_entropy(itm_logits, labels), itm_logits

    # ITG as one pass under the prefix-causal ("UniLM") mask.
    if "itg" in objectives:
        dec = ids.clone()
        dec[:, 0] = bos
        S = Q + T
        m3 = torch.zeros(B, S, S, dtype=torch.long)
        m3[:, :Q, :Q] = 1
        m3[:, Q:, :Q] = 1
        m3[:, Q:, Q:] = torch.tril(torch.ones(T, T, dtype=torch.long))
        m3 = m3 * torch.cat([torch.ones(B, Q, dtype=torch.long), mask], 1)[:, None, :]
        emb = torch.cat([queries, text_embed(dec)], 1)
        m3 = m3[:, None].bool() if TRANSFORMERS_5 else m3
        h = trunk(query_embeds=emb, query_length=Q, attention_mask=m3, encoder_hidden_states=img).last_hidden_state[:, Q:]
        h = F.layer_norm(F.gelu(linear(h, "lm_head.transform.dense")), (h.shape[-1],), P["lm_head.transform.LayerNorm.weight"], P["lm_head.transform.LayerNorm.bias"], eps=1e-12)
        logits = h @ P["embeddings.word_embeddings.weight"].T + P["lm_head.bias"]
        lab = dec.masked_fill(mask == 0, -100)
        out["loss_itg"] = F.cross_entropy(logits[:, :-1].reshape(-1, V), lab[:, 1:].reshape(-1), ignore_index=-100, label_smoothing=0.1)

    out["loss"] = sum(out[f"loss_{o}"] for o in objectives)
    return out


def make_batch(s, gen):
    B, T, V = s["batch"], s["text_len"], s["vocab_size"]
    feats = torch.randn(B, s["image_tokens"], s["encoder_hidden_size"], generator=gen) * 2 + 0.5
    lengths = [T] + [int(x) for x in torch.randint(3, T, (B - 1,), generator=gen)]
    ids = torch.full((B, T), PAD, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = CLS, SEP
        ids[b, 1 : n - 1] = torch.randint(4, V - 1, (n - 2,), generator=gen)
        mask[b, :n] = 1
    iid = s["image_ids"] or list(range(B))
    # Explicit negatives: a different image for each text, a different text for each image.
    ni = torch.tensor([next(j for j in list(range(b + 1, B)) + list(range(b)) if iid[j] != iid[b]) for b in range(B)])
    nt = torch.tensor([next(j for j in list(range(b - 1, -1, -1)) + list(range(B - 1, b, -1)) if iid[j] != iid[b]) for b in range(B)])
    batch = {"image_feats": feats.float(), "input_ids": ids, "attention_mask": mask, "neg_image_idx": ni, "neg_text_idx": nt}
    if s["image_ids"] is not None:
        batch["image_ids"] = torch.tensor(s["image_ids"])
    return batch


def tensor_for_file(name, t):
    return t.detach().float().contiguous()


def main():
    for fixture, s in SHAPES.items():
        gen = torch.Generator().manual_seed(s["seed"])
        trunk, P = build(s, gen)
        batch = make_batch(s, gen)
        config = {k: s[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                                    "cross_attention_frequency", "encoder_hidden_size", "vocab_size",
                                    "max_position_embeddings", "num_query_tokens", "image_text_hidden_size")}
        config.update(layer_norm_eps=1e-12, bos_token_id=s["vocab_size"] - 1)
        meta = {"format": "pt", "config": json.dumps(config)}
        d = os.path.join(OUT, fixture)
        os.makedirs(d, exist_ok=True)
        save_file({k: tensor_for_file(k, v) for k, v in P.items()}, os.path.join(d, "weights.safetensors"), metadata=meta)
        save_file(batch, os.path.join(d, "batch.safetensors"))

        expected = {}
        for variant, full in (("detached", False), ("full", True)):
            for p in P.values():
                p.grad = None
            out = stage1(trunk, P, batch, s, itc_full=full)
            out["loss"].backward()
            grads = {k: tensor_for_file(k, p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in P.items()}
            save_file(grads, os.path.join(d, f"grads_{variant}.safetensors"), metadata=meta)
            expected[variant] = {k: (v.tolist() if v.dim() else v.item()) for k, v in out.items()}
        # Subsets: the total is the sum of the enabled terms only.
        with torch.no_grad():
            for subset in (("itc",), ("itm",), ("itg",), ("itc", "itg")):
                expected["+".join(subset)] = stage1(trunk, P, batch, s, objectives=subset)["loss"].item()
        with open(os.path.join(d, "expected.json"), "w") as f:
            json.dump(expected, f, indent=1)
        print(fixture, {k: round(v, 6) for k, v in expected["detached"].items() if k.startswith("loss")})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()

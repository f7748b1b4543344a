#!/usr/bin/env python3
"""Writes tests/fixtures/bert_init/: what a BERT-initialised Q-Former's text-only pass must give.

- `minilm_expected.safetensors`: token ids and masks of four sentences (the shipped
  bert-base-uncased vocab, padded to 16) and the last hidden states of the real pretrained
  all-MiniLM-L6-v2 (`tools/fetch_minilm.py`) run by `transformers.BertModel`:
  `hidden_fold` with its token-type embedding as it is (every token has type 0), and
  `hidden_drop` with that embedding zeroed, which is what LAVIS's Q-Former (no token types)
  computes after initialisation.
- `mlm_tiny.safetensors`: a small random `BertForMaskedLM` (keys with the `bert.` prefix and the
  MLM head `cls.predictions.*`), to check the head mapping and the prefix handling.

    tools/fetch_minilm.py && /path/to/venv/bin/python tools/make_bert_fixtures.py
"""
import os

import torch
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizer

ROOT = os.path.join(os.path.dirname(__file__), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "bert_init")
SENTENCES = [
    "a small red circle left of a large blue square",
    "A man riding a horse on the beach!",
    "two dogs",
    "the quick brown fox jumps over the lazy dog near the river bank",
]


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = BertTokenizer(os.path.join(ROOT, "data", "bert-base-uncased-vocab.txt"))
    enc = tok(SENTENCES, padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, max_position_embeddings=512, layer_norm_eps=1e-12)
    bert = BertModel(cfg, add_pooling_layer=False).eval()
    state = load_file(os.path.join(ROOT, "target", "assets", "minilm", "model.safetensors"))
    missing, unexpected = bert.load_state_dict(state, strict=False)
    assert not missing, missing
    out = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    with torch.no_grad():
        out["hidden_fold"] = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        bert.embeddings.token_type_embeddings.weight.zero_()
        out["hidden_drop"] = bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    save_file({k: v.contiguous() for k, v in out.items()}, os.path.join(OUT, "minilm_expected.safetensors"))

    torch.manual_seed(5)
    tiny = BertForMaskedLM(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=12)).eval()
    with torch.no_grad():
        for p in tiny.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    tensors = {k: v.contiguous() for k, v in tiny.state_dict().items() if "position_ids" not in k and "decoder" not in k}
    save_file(tensors, os.path.join(OUT, "mlm_tiny.safetensors"), metadata={"format": "pt"})
    print("wrote", sorted(os.listdir(OUT)))


if __name__ == "__main__":
    main()

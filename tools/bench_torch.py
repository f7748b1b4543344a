#!/usr/bin/env python3
"""The PyTorch side of tools/bench_compare.sh: the same stage-one training step as
`qformer bench`, in PyTorch with `transformers`' `Blip2QFormerModel` trunk and LAVIS's losses
(tools/make_fixtures.py's reference, float32, dropout 0.1, negatives sampled from the similarities
as LAVIS does), AdamW with LAVIS's parameter groups (no weight decay on 1-D tensors and biases).
Prints JSON: median ms per step and pairs/s per objective set, peak RSS and, on a GPU, peak
device memory. On a GPU, `--amp bf16` (or f16, with a gradient scaler) runs the step under
`torch.autocast` with float32 master weights, as LAVIS trains.

    python tools/bench_torch.py --preset tiny --batch 32 --text-len 20 --steps 3 --threads 2
    python tools/bench_torch.py --preset blip2 --batch 100 --device cuda --amp bf16
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import build, stage1  # noqa: E402

# qformer's presets (src/model/config.rs): QFormerConfig::tiny() and ::blip2().
PRESETS = {
    "tiny": dict(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024, cross_attention_frequency=1,
                 encoder_hidden_size=384, vocab_size=30523, max_position_embeddings=512, num_query_tokens=8, image_text_hidden_size=128,
                 image_tokens=65),
    "blip2": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072, cross_attention_frequency=2,
                  encoder_hidden_size=1408, vocab_size=30523, max_position_embeddings=512, num_query_tokens=32, image_text_hidden_size=256,
                  image_tokens=257),
}


def random_batch(s, batch, text_len, gen):
    """Random features and captions of varying length ([CLS] ... [SEP], padding), as qformer's."""
    feats = torch.randn(batch, s["image_tokens"], s["encoder_hidden_size"], generator=gen)
    ids = torch.zeros(batch, text_len, dtype=torch.long)
    mask = torch.zeros(batch, text_len, dtype=torch.long)
    for b in range(batch):
        n = int(torch.randint(min(text_len, 8), text_len + 1, (1,), generator=gen))
        ids[b, 0], ids[b, n - 1] = 101, 102
        ids[b, 1:n - 1] = torch.randint(1000, 30522, (n - 2,), generator=gen)
        mask[b, :n] = 1
    return {"image_feats": feats, "input_ids": ids, "attention_mask": mask}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny", choices=PRESETS)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--text-len", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--sets", default="itc,itm,itg", help="objective sets separated by ';'")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    ap.add_argument("--amp", default="none", choices=["none", "bf16", "f16"], help="autocast dtype of the step (GPU)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    amp = {"none": None, "bf16": torch.bfloat16, "f16": torch.float16}[args.amp]
    s = dict(PRESETS[args.preset], image_ids=None)
    gen = torch.Generator().manual_seed(args.seed)
    results = []
    for objectives in [tuple(x.split(",")) for x in args.sets.split(";")]:
        torch.manual_seed(args.seed)
        # Built and drawn on the CPU (the reference's generator), then moved.
        trunk, P = build(s, gen, dtype=torch.float32, dropout=0.1)
        trunk.to(device)
        P = {n: (p if p.device == device else torch.nn.Parameter(p.data.to(device))) for n, p in P.items()}
        P.update({f"qformer.{k}": v for k, v in trunk.named_parameters()})
        trunk.train()
        scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
        decay = [p for n, p in P.items() if p.dim() >= 2 and not n.endswith(".bias")]
        no_decay = [p for n, p in P.items() if not (p.dim() >= 2 and not n.endswith(".bias"))]
        optim = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
        times, phases = [], []
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        for step in range(args.warmup + args.steps):
            batch = {k: v.to(device) for k, v in random_batch(s, args.batch, args.text_len, gen).items()}
            sync()
            start = time.perf_counter()
            optim.zero_grad(set_to_none=True)
            # The reference's own tensors (masks, labels) are made on the step's device.
            with torch.device(device), torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = stage1(trunk, P, batch, s, objectives=objectives)
            sync()
            forward = time.perf_counter()
            scaler.scale(out["loss"]).backward()
            sync()
            backward = time.perf_counter()
            scaler.step(optim)
            scaler.update()
            sync()
            end = time.perf_counter()
            if step >= args.warmup:
                times.append((end - start) * 1e3)
                phases.append(((forward - start) * 1e3, (backward - forward) * 1e3, (end - backward) * 1e3))
        median = statistics.median(times)
        phase = [statistics.median(p[i] for p in phases) for i in range(3)]
        results.append({"objectives": "+".join(objectives), "median_ms": median, "min_ms": min(times), "pairs_per_s": args.batch / (median / 1e3),
                        "forward_ms": phase[0], "backward_ms": phase[1], "optimizer_ms": phase[2]})
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report = {"steps": results, "peak_rss_mb": rss_kb / 1024, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "device": str(device), "amp": args.amp}
    if cuda:
        report["device_name"] = torch.cuda.get_device_name(device)
        report["peak_device_mb"] = torch.cuda.max_memory_reserved(device) / 1e6
        report["peak_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 1e6
    print(json.dumps(report))


if __name__ == "__main__":
    main()

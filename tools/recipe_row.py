#!/usr/bin/env python3
"""Prints one docs/recipe.md row for a finished run: its last full evaluation from
metrics.jsonl (R@1, ITM accuracy, re-ranking gain, grounding gap, captions, miss attribution).

    tools/recipe_row.py RUN_DIR COMMIT WALL_S "the full command"
"""
import json
import sys
from pathlib import Path


def misses(counts):
    """'shape 40, colour 12' with the total first, most frequent first."""
    total = sum(counts.values())
    parts = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return f"{total}: " + ", ".join(f"{k} {v}" for k, v in parts) if parts else "0"


def main():
    run, commit, wall, command = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = [r for r in records if r.get("evaluation")][-1]
    e, step = last["evaluation"], last["step"]
    itc, itm = e["itc"], e["itm"]
    gain = (itm["i2t_r1"] - itc["i2t_r1"], itm["t2i_r1"] - itc["t2i_r1"])
    c = e.get("confusions") or {}
    attribution = " / ".join(misses(c.get(k, {})) for k in ("itc_i2t", "itc_t2i", "itm_negatives")) if c else "–"
    captions = e.get("caption_accuracy")
    cells = [
        commit,
        f"`{command}`",
        str(step),
        f"{wall:.0f} s",
        f"{itc['i2t_r1']:.1f} / {itc['t2i_r1']:.1f}",
        f"{e['itm_acc_positive']:.1f} / {e['itm_acc_negative']:.1f} %",
        f"{gain[0]:+.1f} / {gain[1]:+.1f}",
        f"{e['itg_grounding_gap']:.3f}",
        f"{captions:.1f} %" if captions is not None else "–",
        attribution,
    ]
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Side-by-side benchmark: qformer (`qformer bench`) against PyTorch (tools/bench_torch.py) on
the same stage-one training step, shapes, batch and thread count, run alternately for several
rounds. Prints per shape and objective set the median ms per step, pairs/s, peak RSS of each, and
the ratio qformer / PyTorch (pairs/s). Standard library only: it makes a virtualenv with torch and
transformers for the PyTorch side on first use (target/bench-venv) and builds qformer in release.

    python3 tools/bench_compare.py                       # tiny shape, 3 rounds
    python3 tools/bench_compare.py --shapes tiny,blip2 --rounds 2 --sets "itc,itm,itg;itc;itm;itg"
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
VENV = os.path.join(ROOT, "target", "bench-venv")
SHAPES = {
    "tiny": ["--preset", "tiny", "--batch", "32", "--text-len", "20"],
    "blip2": ["--preset", "blip2", "--batch", "16", "--text-len", "32"],
}


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    mem = next((int(l.split()[1]) // 1024 // 1024 for l in open("/proc/meminfo") if l.startswith("MemTotal")), 0)
    return f"{os.cpu_count()} cores ({cpu}), {mem} GiB, {platform.system()} {platform.release()}"


def run(cmd, env):
    """Runs a command; returns its JSON output and its peak RSS in MB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=ROOT)
    _, status, usage = os.wait4(proc.pid, 0)
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return json.loads(out), usage.ru_maxrss / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="tiny")
    ap.add_argument("--sets", default="itc,itm,itg")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--python", help="a Python that has torch and transformers (default: make target/bench-venv)")
    args = ap.parse_args()

    python = args.python or os.path.join(VENV, "bin", "python")
    if not args.python and not os.path.exists(python):
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", "torch", "transformers==4.46.3", "safetensors"], check=True)
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    common = ["--warmup", str(args.warmup), "--steps", str(args.steps), "--sets", args.sets]
    print(f"machine: {machine()}; {args.threads} threads each; {args.rounds} alternating rounds of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'shape':<6} {'objectives':<12} {'qformer ms':>11} {'torch ms':>10} {'qformer p/s':>12} {'torch p/s':>10} {'qformer MB':>11} {'torch MB':>9} {'ratio':>6}")
    for shape in args.shapes.split(","):
        ours, theirs, split = {}, {}, {}
        rss = {"ours": 0.0, "theirs": 0.0}
        for _ in range(args.rounds):
            q, q_rss = run([os.path.join(ROOT, "target", "release", "qformer"), "bench", *SHAPES[shape], *common, "--json"], env)
            t, t_rss = run([python, os.path.join(ROOT, "tools", "bench_torch.py"), *SHAPES[shape], *common, "--threads", str(args.threads)], env)
            rss["ours"], rss["theirs"] = max(rss["ours"], q_rss), max(rss["theirs"], t_rss)
            for side, store, res in (("qformer", ours, q), ("torch", theirs, t)):
                for r in res["steps"]:
                    store.setdefault(r["objectives"], []).append(r["median_ms"])
                    split.setdefault((side, r["objectives"]), []).append((r["forward_ms"], r["backward_ms"], r["optimizer_ms"]))
        batch = int(SHAPES[shape][SHAPES[shape].index("--batch") + 1])
        for objectives, times in ours.items():
            a, b = statistics.median(times), statistics.median(theirs[objectives])
            print(f"{shape:<6} {objectives:<12} {a:>11.1f} {b:>10.1f} {batch / a * 1e3:>12.2f} {batch / b * 1e3:>10.2f} {rss['ours']:>11.0f} {rss['theirs']:>9.0f} {b / a:>6.2f}")
        print("phase medians, ms (forward / backward / optimizer):")
        for (side, objectives), parts in sorted(split.items()):
            f, bw, o = (statistics.median(p[i] for p in parts) for i in range(3))
            print(f"  {shape:<6} {objectives:<12} {side:<8} {f:>9.1f} {bw:>9.1f} {o:>9.1f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Ember's CPU path next to PyTorch eager, side by side in one run: same networks, same weights,
same inputs, same threads, same batch sizes and precisions. Writes
benches/results/<date>-cpu-vs-pytorch.{md,json}.

    cargo build --release -p ember-loadtest
    python3 benches/cpu_vs_pytorch.py [--seconds 2] [--threads 2]

Ember runs (`ember-loadtest compute --export`), then PyTorch (`benches/gpu/pytorch_reference.py`,
which first checks that each twin gives Ember's FP32 outputs on the exported batch), then Ember
again; Ember's figure is the mean of its two runs, so a machine that gets slower or faster during
the run does not favour either side. Each timed batch includes what a worker does per batch:
the inputs into the network's layout, the network, and the outputs back (softmax/argmax or
sigmoid; tokenising, pooling and normalising for MiniLM).

Needs torch (and sentence-transformers for MiniLM) from PyPI and MiniLM's weights in
target/minilm (`bash .ci/run` fetches them).
"""
import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = "digits,failure,vibration,resnet18,minilm"


def ember(args, export, out):
    subprocess.run(
        [str(ROOT / "target/release/ember-loadtest"), "compute", "--device", "cpu",
         "--networks", args.networks, "--batches", args.batches, "--precisions", args.precisions,
         "--measure", f"{args.seconds}s", "--export", str(export), "--json", str(out)],
        cwd=ROOT, check=True, env=env(args))
    return json.loads(out.read_text())


def pytorch(args, export, out):
    subprocess.run(
        [sys.executable, str(ROOT / "benches/gpu/pytorch_reference.py"), "--export", str(export),
         "--device", "cpu", "--no-compile", "--batches", args.batches, "--precisions", args.precisions,
         "--seconds", str(args.seconds), "--json", str(out)],
        cwd=ROOT, check=True, env=env(args))
    return json.loads(out.read_text())


def env(args):
    """Both sides on the same number of threads."""
    threads = str(args.threads)
    return dict(os.environ, RAYON_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--networks", default=NETWORKS)
    parser.add_argument("--batches", default="1,64,256")
    parser.add_argument("--precisions", default="fp32,fp16,bf16")
    parser.add_argument("--out", default=str(ROOT / "benches/results"))
    args = parser.parse_args()
    work = ROOT / "target/cpu-vs-pytorch"
    export = work / "export"
    export.mkdir(parents=True, exist_ok=True)

    first = ember(args, export, work / "ember-1.json")
    torch = pytorch(args, export, work / "pytorch.json")
    second = ember(args, export, work / "ember-2.json")

    key = lambda r: (r["network"], r["precision"], r["batch"])
    runs = {key(r): [r] for r in first["results"]}
    for r in second["results"]:
        runs[key(r)].append(r)
    eager = {key(r): r for r in torch["results"] if r["mode"] != "compile" and "rows_per_s" in r}
    failed = [r for r in torch["results"] if "error" in r]
    rows = []
    for k, pair in runs.items():
        ember_rate = sum(r["rows_per_s"] for r in pair) / len(pair)
        theirs = eager.get(k)
        rows.append({
            "network": k[0], "precision": k[1], "batch": k[2],
            "ember_rows_per_s": ember_rate,
            "ember_runs_rows_per_s": [r["rows_per_s"] for r in pair],
            "ember_p50_ms": min(r["p50_ms"] for r in pair),
            "pytorch_rows_per_s": theirs and theirs["rows_per_s"],
            "pytorch_mode": theirs and theirs["mode"],
            "ratio": theirs and ember_rate / theirs["rows_per_s"],
        })

    date = datetime.date.today().isoformat()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {
        "date": date,
        "command": "python3 benches/cpu_vs_pytorch.py " + " ".join(sys.argv[1:]),
        "threads": args.threads,
        "cpu": cpu_model(),
        "ember_device": first["device"],
        "torch": torch["torch"],
        "parity_relative": torch["parity_relative"],
        "notes": torch["notes"] + [f"{r['network']} {r['precision']} batch {r['batch']} PyTorch failed: {r['error']}"
                                   for r in failed],
        "results": rows,
    }
    (out / f"{date}-cpu-vs-pytorch.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / f"{date}-cpu-vs-pytorch.md").write_text(markdown(report))
    print(markdown(report))


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def markdown(report):
    lines = [
        f"# Ember CPU vs PyTorch eager, {report['date']}",
        "",
        f"`{report['command']}`: {report['cpu']}, {report['threads']} threads on both sides, "
        f"PyTorch {report['torch']}. Rows per second over whole batches (inputs in, outputs out); Ember is "
        "the mean of a run before and a run after PyTorch's.",
        "",
        "Parity (FP32, PyTorch twin vs Ember, max difference relative to the spread of the outputs): "
        + ", ".join(f"{k} {v:.1e}" for k, v in report["parity_relative"].items()),
        "",
        "| network | precision | batch | Ember rows/s | PyTorch eager rows/s | Ember ÷ PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        theirs = f"{r['pytorch_rows_per_s']:,.0f}" if r["pytorch_rows_per_s"] else "n/a"
        ratio = f"**{r['ratio']:.2f}**" if r["ratio"] else "n/a"
        lines.append(f"| {r['network']} | {r['precision']} | {r['batch']} | "
                     f"{r['ember_rows_per_s']:,.0f} | {theirs} | {ratio} |")
    lines += [""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

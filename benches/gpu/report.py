#!/usr/bin/env python3
"""Joins the GPU check's parts into report.json and report.md (scripts/gpu-check.sh).

Usage: report.py OUT_DIR, reading OUT_DIR/{ember.json, pytorch.json, coldstart.json, tests.txt,
demo-*.json, gpu.txt}; parts that are missing are reported as missing, not guessed.
"""

import json
import os
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def main():
    out = sys.argv[1]
    ember, torch = load(f"{out}/ember.json"), load(f"{out}/pytorch.json")
    coldstart = load(f"{out}/coldstart.json")
    demos = {f[5:-5]: load(f"{out}/{f}") for f in sorted(os.listdir(out)) if f.startswith("demo-") and f.endswith(".json")}
    gpu = open(f"{out}/gpu.txt").read().strip() if os.path.exists(f"{out}/gpu.txt") else "unknown"
    tests = open(f"{out}/tests.txt").read() if os.path.exists(f"{out}/tests.txt") else ""
    rows = []
    for e in (ember or {}).get("results", []):
        key = (e["network"], e["precision"], e["batch"])
        row = {"network": key[0], "precision": key[1], "batch": key[2], "ember_rows_per_s": e["rows_per_s"],
               "ember_first_ms": e["first_ms"]}
        for t in (torch or {}).get("results", []):
            if (t["network"], t["precision"], t["batch"]) == key and "rows_per_s" in t:
                row[f"{t['mode']}_rows_per_s"] = t["rows_per_s"]
                row[f"ember_over_{t['mode']}"] = e["rows_per_s"] / t["rows_per_s"]
        rows.append(row)
    report = {"gpu": gpu, "ember_device": (ember or {}).get("device"), "torch": (torch or {}).get("torch"),
              "parity_relative": (torch or {}).get("parity_relative"), "notes": (torch or {}).get("notes", []),
              "compute": rows, "coldstart": coldstart, "demo": demos,
              "tests_passed": "test result: ok" in tests and "FAILED" not in tests}
    with open(f"{out}/report.json", "w") as f:
        json.dump(report, f, indent=1)
    lines = [f"# GPU check: {gpu}", "", f"Ember on `{report['ember_device']}`, PyTorch {report['torch']}; "
             f"twins' FP32 parity (max |Δp| ÷ spread of p): {report['parity_relative']}", "",
             "| network | precision | batch | Ember rows/s | PyTorch eager | Ember ÷ eager | torch.compile | Ember ÷ compile |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v, spec: format(v, spec) if isinstance(v, float) else "n/a"
    for r in rows:
        eager = r.get("eager_rows_per_s", r.get("sentence-transformers_rows_per_s", r.get("transformers_rows_per_s")))
        ratio = r.get("ember_over_eager", r.get("ember_over_sentence-transformers", r.get("ember_over_transformers")))
        lines.append(f"| {r['network']} | {r['precision']} | {r['batch']} | {r['ember_rows_per_s']:.0f} | {fmt(eager, '.0f')} | "
                     f"{fmt(ratio, '.2f')} | {fmt(r.get('compile_rows_per_s'), '.0f')} | {fmt(r.get('ember_over_compile'), '.2f')} |")
    if coldstart:
        lines += ["", f"Cold start, process start → model loaded and warmed up on the GPU: "
                  f"{coldstart.get('cold_s')} s with an empty kernel cache, {coldstart.get('warm_s')} s with it warm."]
    for model, demo in demos.items():
        if demo:
            lines.append(f"- demo {model}: {demo.get('ok')} ok / {demo.get('errors')} errors, pipeline "
                         f"{demo.get('pipeline_rps', 0):.0f} req/s, p99 {demo.get('p99_ms', 0):.2f} ms")
    lines += ["", f"CUDA tests passed: {report['tests_passed']}"] + [f"- note: {n}" for n in report["notes"]]
    with open(f"{out}/report.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""Summarises the `ember-loadtest elastic` runs of this folder as the Markdown table in docs/aks.md.
Usage: python3 summarize.py [DIR]"""
import glob
import json
import os
import sys

folder = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
print("| run | polling s | cooldown s | realtime value | first answer from zero s (stats / polling / pod / Ember / answer) "
      "| wakes: p99 from zero s | Jobs | scale events | flaps (to zero, then woken) | peak | replica-s (always-on) | p99 s | lost |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
    r = json.load(open(path))
    z = r.get("from_zero") or {}
    # A flap: scaled to zero, then woken again by traffic that was still coming.
    events = r["events"]
    flaps = sum(1 for i, e in enumerate(events) if e["replicas"] == 0 and any(l["replicas"] > 0 for l in events[i + 1:]))
    phases = " / ".join(f"{z.get(k, 0):.1f}" for k in ("statistics_s", "controller_s", "pod_start_s", "ember_start_s", "answer_s"))
    first = r["first_answer_from_zero_s"]
    # Runs before per-wake phases were reported: the first wake only.
    p99 = r.get("from_zero_p99")
    wakes = f"{len(r['wakes'])}: {p99['total_s']:.1f}" if p99 else "–"
    print(f"| {os.path.basename(path)[:-5]} | {r['polling_s']:.0f} | {r['cooldown_s']:.0f} | {r['values'][0]:.0f} "
          f"| {first:.1f} ({phases}) | {wakes} | {len(r.get('job_pods', []))} | {len(r['events'])} | {flaps} | {r['peak_replicas']} "
          f"| {r['replica_seconds']:.0f} ({r['always_on_replica_seconds']:.0f}) "
          f"| {r['load']['overall']['p99_ms'] / 1000:.1f} | {r['lost']} |")

"""Cold start of a worker, as KEDA scaling from zero sees it: process start to /readyz 200
(models loaded and subscribed), then SIGTERM to exit. Runs it several times; prints each and
the median, and fails if a worker does not become ready or does not exit 0.

usage: python3 .ci/coldstart.py EMBER_BINARY MODEL [RUNS]
"""

import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def once(ember, model):
    log = tempfile.TemporaryFile()
    started = time.monotonic()
    worker = subprocess.Popen(
        [ember, "serve", "--transport", "amqp", "--model", model, "--metrics-addr", "127.0.0.1:0"],
        stdout=subprocess.DEVNULL, stderr=log)
    url = None
    try:
        while time.monotonic() - started < 60:
            if url is None:
                log.seek(0)
                found = re.search(rb"url=(http://\S+)", log.read())
                url = found and found.group(1).decode()
            if url:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=1) as response:
                        if response.status == 200:
                            ready = time.monotonic() - started
                            break
                except OSError:
                    pass
            if worker.poll() is not None:
                break
            time.sleep(0.005)
        else:
            ready = None
        if worker.poll() is not None or url is None or ready is None:
            log.seek(0)
            sys.exit(f"worker never became ready:\n{log.read().decode(errors='replace')}")
    finally:
        worker.send_signal(signal.SIGTERM)
        code = worker.wait(timeout=60)
    if code != 0:
        sys.exit(f"worker exited {code} after SIGTERM")
    return ready


def main(ember, model, runs="5"):
    times = [once(ember, model) for _ in range(int(runs))]
    print("cold start to ready (s):", " ".join(f"{t:.3f}" for t in times))
    print(f"median {statistics.median(times):.3f} s over {len(times)} starts ({model}, {ember})")


if __name__ == "__main__":
    main(*sys.argv[1:])

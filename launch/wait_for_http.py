"""Wait until a URL answers 200 (e.g. an MLflow server's /health), at most TIMEOUT seconds; exit 1 naming it if not.

    python launch/wait_for_http.py URL [TIMEOUT_S=120]

The compose trainer runs it before `taalm demo`: podman-compose 4.x ignores `depends_on: condition: service_healthy`,
and a tracker that finds no server at its first request logs to metrics.jsonl only. Standard library only."""

import sys
import time
import urllib.error
import urllib.request


def wait(url: str, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return True
        except (OSError, urllib.error.URLError):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(1)


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    url, timeout_s = sys.argv[1], float(sys.argv[2]) if len(sys.argv) == 3 else 120.0
    if not wait(url, timeout_s):
        sys.exit(f"wait_for_http: {url} did not answer in {timeout_s:.0f} s")
    print(f"wait_for_http: {url} answers")

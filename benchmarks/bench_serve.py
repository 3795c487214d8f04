"""Loopback load test of `aiayn serve`: concurrent clients, each sending requests one after another.

Starts `aiayn serve` on a free loopback port in its own process (the server's settings as a user gets them), then
runs CLIENTS threads x REQUESTS sequential POST /v1/translate requests (one sentence of Multi30k val, or of the
built-in dates task, each), and prints the error count and p50 / p99 / max latency. Not part of CI.

    python benchmarks/bench_serve.py --model runs/demo-dates
    python benchmarks/bench_serve.py --model runs/multi30k-tiny --clients 8 --requests 200 --max-in-flight 8
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k" / "val.en"


def sentences(model_dir: str, n: int) -> list[str]:
    if "multi30k" in model_dir and VAL.exists():
        return VAL.read_text(encoding="utf-8").splitlines()[:n]
    from aiayn.data.dates import task_pairs

    return [s for s, _ in task_pairs("dates", n, 123)]


def post(url: str, body: dict) -> tuple[int, float]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    return status, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args()

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    server = subprocess.Popen(
        [sys.executable, "-m", "aiayn", "serve", "--model", args.model, "--port", str(port), "--device", "cpu",
         "--max-in-flight", str(args.max_in_flight)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start: " + server.stderr.read().decode()[-2000:]) from None
                time.sleep(0.2)
        texts = sentences(args.model, args.clients * args.requests)
        results: list[tuple[int, float]] = []
        lock = threading.Lock()

        def client(k: int) -> None:
            for i in range(args.requests):
                text = texts[(k * args.requests + i) % len(texts)]
                r = post(base + "/v1/translate", {"text": text, "beam": args.beam})
                with lock:
                    results.append(r)

        start = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(30)
    latencies = sorted(lat for _, lat in results)
    errors = {status: sum(1 for s, _ in results if s == status) for status, _ in results if status != 200}
    p = statistics.quantiles(latencies, n=100)
    print(json.dumps({
        "model": args.model, "clients": args.clients, "requests": len(results), "errors": errors,
        "p50_ms": round(p[49] * 1000, 1), "p99_ms": round(p[98] * 1000, 1), "max_ms": round(latencies[-1] * 1000, 1),
        "requests_per_s": round(len(results) / wall, 1), "wall_s": round(wall, 1), "beam": args.beam,
        "max_in_flight": args.max_in_flight,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

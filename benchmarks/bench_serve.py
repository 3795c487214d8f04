"""Loopback load test of `aiayn serve`: concurrent clients, each sending requests one after another.

Starts `aiayn serve` on a free loopback port in its own process (the server's settings as a user gets them), then
runs CLIENTS threads x REQUESTS sequential POST /v1/translate requests (one sentence of Multi30k val, or of the
built-in dates task, each), and prints the error count and p50 / p99 / max latency. Not part of CI.

Without --model it builds a tiny random-weight model of its own (in a temporary folder). With --disconnect-rate R
a client, with probability R, sends a heavy request instead (4 texts at beam 16) and abandons it (the socket
closed 20 ms later, unread): the others' latency and errors show whether abandoned requests still hold slots.

    python benchmarks/bench_serve.py --model runs/demo-dates
    python benchmarks/bench_serve.py --model runs/multi30k-tiny --clients 8 --requests 200 --max-in-flight 8
    python benchmarks/bench_serve.py --clients 8 --max-in-flight 4 --disconnect-rate 0.1 --requests 50
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
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


def tiny_model(folder: Path, ends: bool = True) -> str:
    """A small random-weight encoder-decoder on the dates task's tokenizer; EOS made likely so outputs end (with
    ends=False it is never likely: every request decodes to its length limit, as the heaviest requests do)."""
    import torch

    from aiayn.config import ModelConfig
    from aiayn.data.dates import task_pairs
    from aiayn.model import build
    from aiayn.tokenizer import train_tokenizer
    from aiayn.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    tokenizer = train_tokenizer([f"{s} {t}" for s, t in task_pairs("dates", 2000, 1)], vocab_size=600)
    config = ModelConfig(arch="seq2seq", vocab_size=tokenizer.vocab_size, d_model=64, n_heads=4, n_encoder_layers=2,
                         n_decoder_layers=2, d_ff=256, max_len=128, output_bias=True)  # fmt: skip
    model = build(config).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)
        model.output.bias[config.special_ids.eos] = 5.0 if ends else -50.0
    tokenizer.save(folder / "tokenizer.json")
    name = "tiny" if ends else "tiny-endless"
    save_checkpoint(folder / name, model=model, config={"model": config.to_dict()},
                    tokenizer_json=(folder / "tokenizer.json").read_bytes())  # fmt: skip
    return str(folder / name)


def abandon(port: int, texts: list[str], beam: int = 16, max_len: int = 128) -> None:
    """Send a heavy request (4 texts, beam 16, up to 128 new tokens each: well within the server's work limit)
    and go away 20 ms later without reading the answer."""
    data = json.dumps({"text": texts, "beam": beam, "max_len": max_len}).encode()
    head = "POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(data)}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(head.encode() + data)
        time.sleep(0.02)


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


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a model folder (default: a tiny random-weight model built here)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200, help="per client")
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    parser.add_argument("--disconnect-rate", type=float, default=0.0, help="share of requests abandoned at once")
    parser.add_argument("--seed", type=int, default=0, help="which requests are abandoned")
    for flag in ("--queue", "--request-timeout", "--idle-timeout", "--max-work"):
        parser.add_argument(flag, help="passed to aiayn serve when given")
    return parser.parse_args()


def start_server(args: argparse.Namespace, model: str) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    command = [sys.executable, "-m", "aiayn", "serve", "--model", model, "--port", str(port), "--device", "cpu",
               "--max-in-flight", str(args.max_in_flight)]  # fmt: skip
    for name in ("queue", "request_timeout", "idle_timeout", "max_work"):
        if getattr(args, name) is not None:
            command += ["--" + name.replace("_", "-"), getattr(args, name)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).read()
            return server, port
        except OSError:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise SystemExit("the server did not start: " + server.stderr.read().decode()[-2000:]) from None
            time.sleep(0.2)


def load(args: argparse.Namespace, model: str, port: int) -> tuple[list[tuple[int, float]], int, float]:
    """Run the clients; (status, seconds) of each answered request, the number abandoned, the wall time."""
    texts = sentences(model, args.clients * args.requests)
    results: list[tuple[int, float]] = []
    abandoned = 0
    lock = threading.Lock()

    def client(k: int) -> None:
        nonlocal abandoned
        rng = random.Random(args.seed * 1000 + k)
        for i in range(args.requests):
            body = {"text": texts[(k * args.requests + i) % len(texts)], "beam": args.beam}
            if rng.random() < args.disconnect_rate:
                abandon(port, [texts[(k * args.requests + i + j) % len(texts)] for j in range(4)])
                with lock:
                    abandoned += 1
                continue
            r = post(f"http://127.0.0.1:{port}/v1/translate", body)
            with lock:
                results.append(r)

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, abandoned, time.perf_counter() - start


def main() -> None:
    args = arguments()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp))
        server, port = start_server(args, model)
        try:
            results, abandoned, wall = load(args, model, port)
        finally:
            server.terminate()
            server.wait(30)
    latencies = sorted(lat for _, lat in results)
    errors = {status: sum(1 for s, _ in results if s == status) for status, _ in results if status != 200}
    p = statistics.quantiles(latencies, n=100, method="inclusive")
    print(json.dumps({
        "model": args.model or "tiny (built here)", "clients": args.clients, "requests": len(results) + abandoned,
        "answered": len(results), "abandoned": abandoned, "errors": errors,
        "p50_ms": round(p[49] * 1000, 1), "p99_ms": round(p[98] * 1000, 1), "max_ms": round(latencies[-1] * 1000, 1),
        "requests_per_s": round(len(results) / wall, 1), "wall_s": round(wall, 1), "beam": args.beam,
        "max_in_flight": args.max_in_flight,
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

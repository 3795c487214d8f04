"""The reliability battery's load tier for `aiayn serve` (ids L1-L4 and S5 of docs/RELIABILITY.md).

Each scenario starts `aiayn serve` on a free loopback port in its own process, on a tiny random-weight model built
here (as `bench_serve.py` does), drives it with real HTTP clients and reads the server's RSS and thread count from
/proc (Linux). It prints one JSON object per scenario: what was measured, and each pass criterion of the battery
with `ok` and `timed` (a criterion on latency or wall time). `--untimed` exits 1 when an untimed criterion fails
(errors, status codes, RSS, threads): that is what `tests/reliability/test_load.py` asserts; the timed ones are
benchmark figures, recorded in benchmarks/RESULTS.md.

    python benchmarks/bench_battery.py                       # all of L1 L2 L3 L4 S5, the battery's sizes
    python benchmarks/bench_battery.py --only L3 --scale 0.25  # a quarter of the requests
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench_serve import abandon, sentences, start_server, tiny_model

HOST = "127.0.0.1"
# The tiny random-weight model rarely emits EOS: every request asks for at most a date's length of new tokens
# (12), so that a request costs what a real short translation costs rather than the length limit.
NEW = 12


def request(port: int, method: str = "POST", path: str = "/v1/translate", body: dict | None = None,
            raw: bytes | None = None, headers: dict | None = None) -> dict:  # fmt: skip
    """One request on a new connection: status (None when the connection failed), seconds, headers, error."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    start = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        response.read()
        return {"status": response.status, "s": time.perf_counter() - start, "headers": dict(response.getheaders())}
    except OSError as e:
        return {"status": None, "s": time.perf_counter() - start, "error": f"{type(e).__name__}: {e}"}
    finally:
        connection.close()


def proc(pid: int) -> dict:
    """The server's resident memory (MB) and thread count, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {"rss_mb": int(fields["VmRSS"].split()[0]) / 1024, "threads": int(fields["Threads"])}


def pct(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def ms(x: float) -> float:
    return round(x * 1000, 1)


def check(what: str, ok: bool, timed: bool) -> dict:
    return {"what": what, "ok": bool(ok), "timed": timed}


def in_parallel(n: int, work) -> list:
    """Run work(k) in n threads at once; the concatenated lists they return."""
    out: list[list] = [[] for _ in range(n)]
    threads = [threading.Thread(target=lambda k=k: out[k].extend(work(k))) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for part in out for r in part]


class Server:
    """`aiayn serve` in a child process, with the options of one scenario."""

    def __init__(self, model: str, **options) -> None:
        settings = {"threads": 2, "max_in_flight": 4, "queue": None, "request_timeout": None, "idle_timeout": None,
                    "max_work": None}  # fmt: skip
        settings.update({k: (str(v) if v is not None else None) for k, v in options.items()})
        settings["max_in_flight"] = int(settings["max_in_flight"])
        self.process, self.port = start_server(argparse.Namespace(**settings), model)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(30)


def l1(models: dict, texts: list[str], scale: float) -> dict:
    """1 client x 50 requests, then 8 concurrent clients x 200 (beam 4, one sentence each)."""
    alone, each = max(5, int(50 * scale)), max(10, int(200 * scale))
    with Server(models["ends"]) as server:  # the defaults: 4 in flight, a queue of 8
        def client(k: int, n: int) -> list[dict]:
            bodies = [{"text": texts[(k * n + i) % len(texts)], "beam": 4, "max_len": NEW} for i in range(n)]
            return [request(server.port, body=body) for body in bodies]

        one = client(0, alone)
        start = time.perf_counter()
        eight = in_parallel(8, lambda k: client(k, each))
        wall = time.perf_counter() - start
    lat1, lat8 = [r["s"] for r in one], [r["s"] for r in eight]
    errors = sum(r["status"] != 200 for r in one + eight)
    p50_1, p50_8, p99_8 = pct(lat1, 50), pct(lat8, 50), pct(lat8, 99)
    measured = {"requests": len(one) + len(eight), "errors": errors, "p50_1_ms": ms(p50_1), "p50_8_ms": ms(p50_8),
                "p99_8_ms": ms(p99_8), "wall_s": round(wall, 1)}  # fmt: skip
    return {"measured": measured, "checks": [
        check("0 errors: every response 200, no resets or timeouts", errors == 0, False),
        check("p99(8 clients) <= 3 x p50(8 clients)", p99_8 <= 3 * p50_8, True),
        check("p50(8 clients) <= 1.25 x 8 x p50(1 client)", p50_8 <= 1.25 * 8 * p50_1, True),
        check("the 8-client run takes <= 120 s", wall <= 120, True),
    ]}  # fmt: skip


def l2(models: dict, texts: list[str], scale: float) -> dict:
    """Overload: 32 concurrent clients against 2 slots and a queue of 8, /health polled throughout."""
    each = max(3, int(10 * scale))
    health: list[dict] = []
    with Server(models["ends"], max_in_flight=2, queue=8) as server:
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                health.append(request(server.port, "GET", "/health"))
                time.sleep(0.05)

        poller = threading.Thread(target=poll)
        poller.start()
        body = {"text": texts[:2], "beam": 4, "max_len": NEW}
        results = in_parallel(32, lambda k: [request(server.port, body=body) for _ in range(each)])
        done.set()
        poller.join()
    statuses = sorted({r["status"] for r in results}, key=str)
    rejected = [r for r in results if r["status"] == 503]
    retry_after = all(r["headers"].get("retry-after") or r["headers"].get("Retry-After") for r in rejected)
    reject_p99 = pct([r["s"] for r in rejected], 99) if rejected else 0.0
    health_max = max(r["s"] for r in health)
    measured = {"requests": len(results), "ok": sum(r["status"] == 200 for r in results), "rejected": len(rejected),
                "statuses": statuses, "reject_p99_ms": ms(reject_p99), "health_polls": len(health),
                "health_max_ms": ms(health_max)}  # fmt: skip
    return {"measured": measured, "checks": [
        check("only 200 or 503, no connection errors, other 5xx or resets", set(statuses) <= {200, 503}, False),
        check("every 503 carries Retry-After", retry_after, False),
        check("some requests were rejected (the server really was overloaded)", bool(rejected), False),
        check("/health answered 200 throughout", all(r["status"] == 200 for r in health), False),
        check("rejections answered in < 100 ms (p99)", reject_p99 < 0.1, True),
        check("/health answers in < 1 s throughout", health_max < 1.0, True),
    ]}  # fmt: skip


def l3(models: dict, texts: list[str], scale: float) -> dict:
    """Soak: 2,000 sequential requests; RSS after a warm-up of 100 and at the end, latency of the first and last
    quarter."""
    n = max(200, int(2000 * scale))
    with Server(models["ends"]) as server:
        results = []
        for i in range(n):
            results.append(request(server.port, body={"text": texts[i % len(texts)], "beam": 4, "max_len": NEW}))
            if i == 99:
                warm = proc(server.process.pid)
        end = proc(server.process.pid)
    lat = [r["s"] for r in results]
    first, last = pct(lat[: n // 4], 50), pct(lat[-n // 4 :], 50)
    errors = sum(r["status"] != 200 for r in results)
    measured = {"requests": n, "errors": errors, "rss_warm_mb": round(warm["rss_mb"], 1),
                "rss_end_mb": round(end["rss_mb"], 1), "p50_first_quarter_ms": ms(first),
                "p50_last_quarter_ms": ms(last)}  # fmt: skip
    return {"measured": measured, "checks": [
        check("0 errors", errors == 0, False),
        check("RSS at the end <= RSS after warm-up + 5%", end["rss_mb"] <= 1.05 * warm["rss_mb"], False),
        check("no growing latency: p50 of the last quarter <= 1.2 x p50 of the first", last <= 1.2 * first, True),
    ]}  # fmt: skip


def l4(models: dict, texts: list[str], scale: float) -> dict:
    """20 clients that send a heavy request (4 texts, beam 16, 200 new tokens, on a model that never ends early)
    and go away 20 ms later, each followed at once by a light request; one slot, so the light one waits for the
    abandoned one's slot."""
    times = max(5, int(20 * scale))
    light = {"text": texts[0], "beam": 1, "max_len": 8}
    heavy = texts[1:5]
    with Server(models["endless"], max_in_flight=1, queue=4) as server:
        cpu_start = cpu_seconds(server.process.pid)
        heavy_alone = request(server.port, body={"text": heavy, "beam": 16, "max_len": 200})  # warms the worker
        heavy_cpu = cpu_seconds(server.process.pid) - cpu_start
        baseline = [request(server.port, body=light) for _ in range(20)]
        before = proc(server.process.pid)
        cpu_before = cpu_seconds(server.process.pid)
        after_abandon = []
        for _ in range(times):
            abandon(server.port, heavy, beam=16, max_len=200)
            after_abandon.append(request(server.port, body=light))
        cpu_used = cpu_seconds(server.process.pid) - cpu_before
        time.sleep(1.0)
        after = proc(server.process.pid)
    base_p50, next_p50 = pct([r["s"] for r in baseline], 50), pct([r["s"] for r in after_abandon], 50)
    statuses = [r["status"] for r in baseline + after_abandon]
    measured = {"disconnects": times, "heavy_alone_ms": ms(heavy_alone["s"]),
                "heavy_alone_cpu_s": round(heavy_cpu, 2), "baseline_p50_ms": ms(base_p50),
                "next_p50_ms": ms(next_p50), "next_max_ms": ms(max(r["s"] for r in after_abandon)),
                "server_cpu_s": round(cpu_used, 2), "threads_before": before["threads"],
                "threads_after": after["threads"]}  # fmt: skip
    return {"measured": measured, "checks": [
        check("every light request 200", heavy_alone["status"] == 200 and set(statuses) == {200}, False),
        check("no leaked threads (count after <= count before)", after["threads"] <= before["threads"], False),
        check("next request's p50 <= 1.2 x baseline p50", next_p50 <= 1.2 * base_p50, True),
        check("the abandoned requests used < a quarter of the CPU time they would have to the end",
              cpu_used < 0.25 * times * heavy_cpu, True),
    ]}  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc/PID/stat (clock ticks of 1/100 s on Linux)."""
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def s5(models: dict, texts: list[str], scale: float) -> dict:
    """Bodies over the limit: 1 MiB + 1 byte, and Content-Length 10^12 with a tiny body, 20 of each."""
    with Server(models["ends"]) as server:
        request(server.port, body={"text": texts[0]})  # warm-up
        before = proc(server.process.pid)
        big = [request(server.port, raw=b'{"text": "' + b"a" * (1 << 20) + b'"}') for _ in range(20)]
        lying = [lie(server.port) for _ in range(20)]
        after = proc(server.process.pid)
        normal = request(server.port, body={"text": texts[0]})
    answers = big + lying
    slowest = max(r["s"] for r in answers)
    measured = {"answers": sorted({str(r["status"]) for r in answers}), "slowest_413_ms": ms(slowest),
                "rss_before_mb": round(before["rss_mb"], 1), "rss_after_mb": round(after["rss_mb"], 1),
                "next_status": normal["status"]}  # fmt: skip
    return {"measured": measured, "checks": [
        check("every oversized body gets 413", all(r["status"] == 413 for r in answers), False),
        check("server RSS not grown by > 5 MB", after["rss_mb"] - before["rss_mb"] <= 5, False),
        check("the next normal request gets 200", normal["status"] == 200, False),
        check("each 413 comes in < 1 s", slowest < 1.0, True),
    ]}  # fmt: skip


def lie(port: int) -> dict:
    """A request that claims a body of 10^12 bytes and sends 2."""
    import socket

    start = time.perf_counter()
    with socket.create_connection((HOST, port), timeout=10) as s:
        s.sendall(b"POST /v1/translate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 1000000000000\r\n\r\n{}")  # fmt: skip
        head = s.recv(200).decode(errors="replace")
    status = int(head.split()[1]) if head.startswith("HTTP/1.1") else None
    return {"status": status, "s": time.perf_counter() - start}


SCENARIOS = {"L1": l1, "L2": l2, "L3": l3, "L4": l4, "S5": s5}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="+", choices=list(SCENARIOS), default=list(SCENARIOS))
    parser.add_argument("--scale", type=float, default=1.0, help="share of the battery's request counts")
    parser.add_argument("--untimed", action="store_true", help="exit 1 when an untimed criterion fails")
    args = parser.parse_args()
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"ends": tiny_model(Path(tmp)), "endless": tiny_model(Path(tmp), ends=False)}
        texts = sentences("", 400)
        for name in args.only:
            result = {"id": name, **SCENARIOS[name](models, texts, args.scale)}
            print(json.dumps(result), flush=True)
            failed += [f"{name}: {c['what']}" for c in result["checks"] if not c["ok"] and not c["timed"]]
    if args.untimed and failed:
        sys.exit("untimed criteria failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()

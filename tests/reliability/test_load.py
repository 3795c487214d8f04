"""The battery's load tier for `aiayn serve` (L1-L4, S5): the slow tier, run by `pytest -m slow` (and .ci/run).

Each case runs `benchmarks/bench_battery.py` for one id, at a quarter of the battery's request counts (the full
counts are the benchmark's, in benchmarks/RESULTS.md), against a real `aiayn serve` process over loopback, and
asserts the criteria that do not depend on the machine's speed: no errors or resets, only the status codes
allowed, Retry-After on every 503, the server's RSS after a soak and after oversized bodies, and its thread count
after clients that went away. Latency criteria are the benchmark's, not asserted here.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS and threads from /proc"),
]


def battery(name: str) -> dict:
    run = subprocess.run(
        [sys.executable, "bench_battery.py", "--only", name, "--scale", "0.25"],
        cwd=ROOT / "benchmarks", capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def untimed(result: dict) -> dict[str, bool]:
    return {c["what"]: c["ok"] for c in result["checks"] if not c["timed"]}


@pytest.mark.parametrize("name", ["L1", "L2", "L3", "L4", "S5"])
def test_the_server_meets_the_untimed_criteria_under_load(name):
    result = battery(name)
    checks = untimed(result)
    assert checks and all(checks.values()), (checks, result["measured"])
    measured = result["measured"]
    if name == "L1":
        assert measured["errors"] == 0 and measured["requests"] == 12 + 8 * 50
    if name == "L2":
        assert set(measured["statuses"]) <= {200, 503} and measured["ok"] > 0 and measured["rejected"] > 0
    if name == "L3":
        assert measured["rss_end_mb"] <= 1.05 * measured["rss_warm_mb"]
    if name == "L4":
        assert measured["threads_after"] <= measured["threads_before"]
    if name == "S5":
        assert measured["answers"] == ["413"] and measured["next_status"] == 200

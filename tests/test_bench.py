"""The benchmark suite runs: a smoke test of `bench/run_all.py --quick` (figures are not
asserted: this machine is shared and noisy; bench/RESULTS.md holds the measured ones)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_benchmark_runs_and_prints_its_table(admin_url):
    """`run_all.py --quick` for menagerie and the bare-asyncpg ceiling finishes and prints
    every row of its table, with figures in both their columns."""
    env = {**os.environ, "BENCH_DSN_ADMIN": admin_url}
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--no-write", "--peers", "menagerie,bare"],
        capture_output=True, text=True, timeout=600, env=env, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for row in ("pickup idle p50", "drain, 1 process", "POST /generations", "claim 10"):
        assert row in done.stdout, row
    drain = next(line for line in done.stdout.splitlines() if line.startswith("| drain, 1 process"))
    _, _, menagerie, _, _, bare, *_ = drain.split("|")
    assert menagerie.strip()[0].isdigit() and bare.strip()[0].isdigit(), drain

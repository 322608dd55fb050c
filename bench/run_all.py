"""Run every benchmark and print one table of figures and ratios; write bench/RESULTS.md.

    python bench/run_all.py            # full: 3 runs each, median and min-max
    python bench/run_all.py --quick    # smoke: small workloads, 1 run, under a minute or so
    python bench/run_all.py --quick --no-write --json out.json   # also every run's figures, as JSON

Each measure runs as its own process (bench/peers.py, bench/web.py, bench/scale.py) on a fresh
database. Peers that are not installed (`pip install -e '.[bench]'`) and the HTTP measures
when wrk is missing are reported as skipped, not failed. Text after the notes marker in an
existing RESULTS.md is kept.

`--json PATH` writes, for each measure (`drain/menagerie`, `http-post/menagerie`, ...), either
the figures of every run (`{"runs": [...]}`, each as the measure's script printed them:
jobs handled and failed, requests failed, ...) or why it was skipped (`{"skipped": reason}`),
so that a test can check what the table only summarises.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "RESULTS.md"
NOTES_MARKER = "<!-- notes: kept across runs -->"
PEERS = ("menagerie", "pgqueuer", "procrastinate", "bare")
QUEUE_MEASURES = ("pickup-idle", "pickup-300", "drain", "enqueue-rate")


def run_json(args: list[str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def leaves(figures: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in figures.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(leaves(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, tuple[float, float, float]]:
    """{figure: (median, min, max)} over runs."""
    flat = [leaves(run) for run in runs]
    return {
        key: (statistics.median(f[key] for f in flat), min(f[key] for f in flat), max(f[key] for f in flat))
        for key in flat[0]
        if all(key in f for f in flat)
    }


def available(peer: str) -> bool:
    return peer in ("menagerie", "bare") or importlib.util.find_spec(peer) is not None


def collect(
    quick: bool, runs: int, peers: list[str], peer_runs: dict[str, int], raw: dict[str, Any]
) -> dict[str, Any]:
    """Run every measure; return the summaries the table reads. `raw` receives, per measure,
    every run's figures or the reason it was skipped (what --json writes)."""
    results: dict[str, Any] = {}
    flag = ["--quick"] if quick else []

    def skip(key: str, reason: str) -> None:
        results[key] = f"skipped: {reason}"
        raw[key] = {"skipped": reason}

    for measure in QUEUE_MEASURES:
        for peer in peers:
            if not available(peer):
                skip(f"{measure}/{peer}", "not installed")
                continue
            figures = [
                run_json([str(BENCH / "peers.py"), "--peer", peer, "--measure", measure, *flag])["figures"]
                for _ in range(peer_runs.get(peer, runs))
            ]
            results[f"{measure}/{peer}"] = summarise(figures)
            raw[f"{measure}/{peer}"] = {"runs": figures}
            print(f"  {measure:13} {peer:14} done", file=sys.stderr, flush=True)
    http = {
        "http-post": ["--measure", "post"],
        "http-post-ungrouped": ["--measure", "post", "--server-env", "INSERT_BATCH_MAX=1"],
        "http-get": ["--measure", "get"],
    }
    for key, args in http.items():
        if shutil.which("wrk") is None:
            skip(f"{key}/menagerie", "wrk not installed")
            continue
        figures = [run_json([str(BENCH / "web.py"), *args, *flag])["figures"] for _ in range(runs)]
        results[f"{key}/menagerie"] = summarise(figures)
        raw[f"{key}/menagerie"] = {"runs": figures}
        print(f"  {key:20} menagerie done", file=sys.stderr, flush=True)
    variants = {
        "drain-async": ["--set", "handler=async"],
        "drain-watched": ["--set", "watched=true"],
    }
    for key, args in variants.items():
        if "menagerie" not in peers:
            continue
        figures = [
            run_json([str(BENCH / "peers.py"), "--peer", "menagerie", "--measure", "drain", *args, *flag])[
                "figures"
            ]
            for _ in range(runs)
        ]
        results[f"{key}/menagerie"] = summarise(figures)
        raw[f"{key}/menagerie"] = {"runs": figures}
        print(f"  {key:20} menagerie done", file=sys.stderr, flush=True)
    loads = {
        "wake": ["--measure", "wake"],
        "mixed": ["--measure", "mixed"],
        "snapshot": ["--measure", "snapshot"],
        "snapshot-unrotated": ["--measure", "snapshot", "--rotation", "off"],
    }
    for key, args in loads.items():
        if "menagerie" not in peers or (quick and key == "snapshot-unrotated"):
            continue
        figures = run_json([str(BENCH / "queue_load.py"), *args, *flag])["figures"]
        results[f"{key}/menagerie"] = summarise([figures])
        raw[f"{key}/menagerie"] = {"runs": [figures]}
        print(f"  {key:20} menagerie done", file=sys.stderr, flush=True)
    if "menagerie" in peers:
        figures = [run_json([str(BENCH / "breakdown.py"), *flag])["figures"] for _ in range(runs)]
        results["breakdown/menagerie"] = summarise(figures)
        raw["breakdown/menagerie"] = {"runs": figures}
        print(f"  {'breakdown':20} menagerie done", file=sys.stderr, flush=True)
    scale = run_json([str(BENCH / "scale.py"), *flag])
    results["scale/menagerie"] = summarise([scale["figures"]])
    results["scale_rows"] = scale["finished_jobs"]
    raw["scale/menagerie"] = {"runs": [scale["figures"]], "finished_jobs": scale["finished_jobs"]}
    return results


def cell(results: dict[str, Any], key: str, figure: str, digits: int = 1) -> str:
    entry = results.get(key)
    if entry is None:
        return "–"
    if isinstance(entry, str):
        return entry.split(":")[0]
    if figure not in entry:
        return "–"
    median, low, high = entry[figure]
    if low == high:
        return f"{median:,.{digits}f}"
    return f"{median:,.{digits}f} ({low:,.{digits}f}–{high:,.{digits}f})"


def value(results: dict[str, Any], key: str, figure: str) -> float | None:
    entry = results.get(key)
    return entry[figure][0] if isinstance(entry, dict) and figure in entry else None


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else "–"


ROWS = [
    # label, measure key, figure, target: (kind, factor) comparing menagerie with PGQueuer
    ("pickup idle p50, ms (client clock)", "pickup-idle", "p50_ms", ("at most", 0.5)),
    ("pickup idle p99, ms (client clock)", "pickup-idle", "p99_ms", ("at most", 0.5)),
    ("pickup idle p50, ms (database clock)", "pickup-idle", "db_clock_p50_ms", None),
    ("pickup at 300/s p50, ms (client clock)", "pickup-300", "p50_ms", ("at most", 0.5)),
    ("pickup at 300/s p99, ms (client clock)", "pickup-300", "p99_ms", ("at most", 0.5)),
    ("drain, 1 process, jobs/s", "drain", "workers_1.jobs_per_s", ("at least", 2.5)),
    ("drain, 2 processes, jobs/s", "drain", "workers_2.jobs_per_s", None),
    ("enqueue, 32 producers, jobs/s (in process)", "enqueue-rate", "jobs_per_s", None),
]


def table(results: dict[str, Any]) -> str:
    lines = [
        "| measure | menagerie | PGQueuer | procrastinate | bare asyncpg (ceiling) | menagerie ÷ PGQueuer | target |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, measure, figure, target in ROWS:
        ours = value(results, f"{measure}/menagerie", figure)
        theirs = value(results, f"{measure}/pgqueuer", figure)
        verdict = "–"
        if target and ours is not None and theirs:
            kind, factor = target
            met = ours <= factor * theirs if kind == "at most" else ours >= factor * theirs
            verdict = f"{kind} {factor}× PGQueuer: {'met' if met else 'NOT met'}"
        lines.append(
            f"| {label} | {cell(results, f'{measure}/menagerie', figure, 2)} | "
            f"{cell(results, f'{measure}/pgqueuer', figure, 2)} | "
            f"{cell(results, f'{measure}/procrastinate', figure, 2)} | "
            f"{cell(results, f'{measure}/bare', figure, 2)} | {ratio(ours, theirs)} | {verdict} |"
        )
    drain = value(results, "drain/menagerie", "workers_1.jobs_per_s")

    def worker_cpu(peer: str) -> str:
        """Worker process CPU per job in the 1-process drain (start-up included), µs."""
        cpu = value(results, f"drain/{peer}", "workers_1.worker_cpu_s_total")
        jobs = value(results, f"drain/{peer}", "workers_1.jobs")
        return f"{cpu / jobs * 1e6:.1f}" if cpu is not None and jobs else "–"

    def breakdown(figure: str) -> str:
        return cell(results, "breakdown/menagerie", figure, 3)

    lines += [
        "",
        "| per 100 jobs (bench/breakdown.py: statements one after another, 20,000 due jobs) | menagerie | bare asyncpg | ÷ bare |",
        "|---|---|---|---|",
        f"| claim, ms | {breakdown('menagerie.claim_ms')} | {breakdown('bare.claim_ms')} | "
        f"{ratio(value(results, 'breakdown/menagerie', 'menagerie.claim_ms'), value(results, 'breakdown/menagerie', 'bare.claim_ms'))} |",
        f"| completion, durable (bare: delete, not flushed), ms | {breakdown('menagerie.finish_ms')} | "
        f"{breakdown('bare.finish_ms')} | "
        f"{ratio(value(results, 'breakdown/menagerie', 'menagerie.finish_ms'), value(results, 'breakdown/menagerie', 'bare.finish_ms'))} |",
        f"| completion without waiting for the WAL flush, ms | {breakdown('menagerie.finish_unflushed_ms')} | "
        f"{breakdown('bare.finish_ms')} | "
        f"{ratio(value(results, 'breakdown/menagerie', 'menagerie.finish_unflushed_ms'), value(results, 'breakdown/menagerie', 'bare.finish_ms'))} |",
        f"| worker process CPU per job in the drain (µs; PGQueuer {worker_cpu('pgqueuer')}) | "
        f"{worker_cpu('menagerie')} | {worker_cpu('bare')} | – |",
        "",
        "| menagerie's drain, 1 process, other handlers | jobs/s | ÷ plain-function no-op |",
        "|---|---|---|",
        f"| async no-op handler (a task per job) | {cell(results, 'drain-async/menagerie', 'workers_1.jobs_per_s')} | "
        f"{ratio(value(results, 'drain-async/menagerie', 'workers_1.jobs_per_s'), drain)} |",
        f"| watched jobs (each change recorded in job_events, as generations are) | "
        f"{cell(results, 'drain-watched/menagerie', 'workers_1.jobs_per_s')} | "
        f"{ratio(value(results, 'drain-watched/menagerie', 'workers_1.jobs_per_s'), drain)} |",
        "",
        "| one worker, two kinds (fast: 300/s, 16 slots; slow: 1 s each, 2 slots) | fast kind alone | beside the slow kind's backlog | target |",
        "|---|---|---|---|",
    ]
    for figure in ("p50_ms", "p99_ms"):
        alone = value(results, "mixed/menagerie", f"fast alone.{figure}")
        mixed = value(results, "mixed/menagerie", f"fast beside a slow backlog.{figure}")
        lines.append(
            f"| fast kind's pickup {figure.removesuffix('_ms')}, ms | {alone} | {mixed} | unchanged: {ratio(mixed, alone)} |"
        )
    lines += [
        f"| slow kind's backlog at the end, jobs | – | {value(results, 'mixed/menagerie', 'slow backlog at the end')} | – |",
        "",
        "| 100 jobs/s, then 100 jobs/s while a transaction stays open | clean claim p50, ms | held claim p50, ms | held ÷ clean | target |",
        "|---|---|---|---|---|",
    ]
    for key, label in (("snapshot", "rotation on (as shipped)"), ("snapshot-unrotated", "rotation off")):
        clean = value(results, f"{key}/menagerie", "clean.claim_p50_ms")
        held = value(results, f"{key}/menagerie", "old snapshot held.claim_p50_ms")
        within = clean is not None and held is not None and held <= 1.5 * clean
        target = f"≤ 1.5×: {'met' if within else 'NOT met'}" if key == "snapshot" else "–"
        lines.append(f"| {label} | {clean} | {held} | {ratio(held, clean)} | {target} |")
    lines += [
        "",
        "| this machine: waking an idle PostgreSQL backend | SELECT 1, ms |",
        "|---|---|",
        f"| back to back, p50 | {value(results, 'wake/menagerie', 'select1_back_to_back_p50_ms')} |",
        f"| after 200 ms of quiet (the idle pickup's gap), p50 | {value(results, 'wake/menagerie', 'select1_after_200ms_idle_p50_ms')} |",
    ]
    enqueue = value(results, "enqueue-rate/pgqueuer", "jobs_per_s")
    post = value(results, "http-post/menagerie", "requests_per_s")
    post_p99 = value(results, "http-post/menagerie", "p99_ms")
    get = value(results, "http-get/menagerie", "requests_per_s")
    bare = value(results, "http-get/menagerie", "bare.requests_per_s")

    def tail(key: str) -> str:
        """p99 over p50 of one HTTP measure, against the ≤ 3× target."""
        p50, p99 = value(results, key, "p50_ms"), value(results, key, "p99_ms")
        within = p50 is not None and p99 is not None and p99 <= 3 * p50
        return f"p99 ≤ 3× p50 ({ratio(p99, p50)}): {'met' if within else 'NOT met'}"

    lines += [
        "",
        "| HTTP (wrk, 64 connections, same machine) | menagerie | target |",
        "|---|---|---|",
        f"| POST /generations, req/s | {cell(results, 'http-post/menagerie', 'requests_per_s')} | "
        f"≥ 1.5× PGQueuer's in-process enqueue ({ratio(post, enqueue)}): "
        f"{'met' if post and enqueue and post >= 1.5 * enqueue else 'NOT met'} |",
        f"| POST /generations p50, ms | {cell(results, 'http-post/menagerie', 'p50_ms', 2)} | – |",
        f"| POST /generations p99, ms | {cell(results, 'http-post/menagerie', 'p99_ms', 2)} | "
        f"< 50 ms: {'met' if post_p99 is not None and post_p99 < 50 else 'NOT met'}; {tail('http-post/menagerie')} |",
        f"| POST, each job its own INSERT (INSERT_BATCH_MAX=1), req/s | "
        f"{cell(results, 'http-post-ungrouped/menagerie', 'requests_per_s')} | "
        f"– (grouping: {ratio(post, value(results, 'http-post-ungrouped/menagerie', 'requests_per_s'))}) |",
        f"| POST, each job its own INSERT, p99, ms | "
        f"{cell(results, 'http-post-ungrouped/menagerie', 'p99_ms', 2)} | – |",
        f"| GET /generations/{{id}}, req/s | {cell(results, 'http-get/menagerie', 'requests_per_s')} | "
        f"≥ 0.8× the bare app ({ratio(get, bare)}): {'met' if get and bare and get >= 0.8 * bare else 'NOT met'} |",
        f"| GET /generations/{{id}} p50, ms | {cell(results, 'http-get/menagerie', 'p50_ms', 2)} | – |",
        f"| GET /generations/{{id}} p99, ms | {cell(results, 'http-get/menagerie', 'p99_ms', 2)} | "
        f"{tail('http-get/menagerie')} |",
        f"| the same GET from bare Starlette + asyncpg (bench/bare_app.py), req/s | "
        f"{cell(results, 'http-get/menagerie', 'bare.requests_per_s')} | the ceiling |",
        f"| bare GET p50 / p99, ms | {cell(results, 'http-get/menagerie', 'bare.p50_ms', 2)} / "
        f"{cell(results, 'http-get/menagerie', 'bare.p99_ms', 2)} | – |",
        "",
        f"| scale: {results.get('scale_rows', 0):,} finished jobs added | empty, ms | loaded, ms | loaded ÷ empty | target |",
        "|---|---|---|---|---|",
    ]
    for figure in ("claim_10_ms", "list_first_page_ms", "list_next_page_ms"):
        empty = value(results, "scale/menagerie", f"empty.{figure}")
        loaded = value(results, "scale/menagerie", f"loaded.{figure}")
        within = empty is not None and loaded is not None and loaded <= 1.2 * empty
        lines.append(
            f"| {figure.removesuffix('_ms').replace('_', ' ')} | {empty} | {loaded} | {ratio(loaded, empty)} | "
            f"≤ 1.2×: {'met' if within else 'NOT met'} |"
        )
    return "\n".join(lines)


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("menagerie", "pgqueuer", "procrastinate", "asyncpg", "uvicorn", "starlette"):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found)


def write_results(results: dict[str, Any], *, quick: bool, runs: int, seconds: float) -> None:
    notes = ""
    if RESULTS.exists() and NOTES_MARKER in RESULTS.read_text():
        notes = RESULTS.read_text().split(NOTES_MARKER, 1)[1]
    try:
        postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        postgres = "unknown"
    RESULTS.write_text(
        f"""# menagerie benchmark results

Written by `python bench/run_all.py{"".join(" " + arg for arg in sys.argv[1:])}` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
({seconds / 60:.0f} min). Each cell: median of {runs} run(s) (fewer where the command line says so), (min–max) when they differ. Every
ratio compares figures measured in this one run, on this machine.

- Machine: {platform.machine()}, {platform.system()} {platform.release()}, {__import__("os").cpu_count()} cores; Python {platform.python_version()}; {postgres}
  (the server under test, PostgreSQL, the peers' workers and the load generator share the cores).
- Versions: {versions()}
- Commands: `python bench/peers.py --peer P --measure M` for the queue measures,
  `python bench/web.py --measure post|get [--server-env INSERT_BATCH_MAX=1]` (wrk) for HTTP,
  `python bench/scale.py` for scale.
- bare asyncpg: no library, a two-column table, claim-100 then delete-100 on one connection
  that commits without waiting for the WAL flush (`bench/peers.py`, `BarePeer`): about the
  least a LISTEN/NOTIFY + SKIP LOCKED queue costs here, without leases, retries, history or
  events. A ceiling, not a peer.
- menagerie's claims commit without waiting for the WAL flush (every later write of the job
  flushes them; README, "PostgreSQL crashes"); PGQueuer's and procrastinate's commit durably.
- Scale: an empty and a loaded database measured in alternation, 5 calls at a time.
- Pickup latency, client clock: from the producer's clock right after its enqueue call returned
  (its commit) to the handler's first line, same machine clock, for all three queues. Database
  clock (menagerie only): `started_at - created_at` of each job, both stamped by PostgreSQL.

{table(results)}

{NOTES_MARKER}{notes}"""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small workloads, one run")
    parser.add_argument("--runs", type=int, help="runs per measure (default 3, quick 1)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument(
        "--peer-runs",
        default="",
        help="runs for some peers only, e.g. procrastinate=1 (its drain takes minutes)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    parser.add_argument(
        "--json",
        type=Path,
        metavar="PATH",
        help="also write every run's figures and every skip's reason here",
    )
    args = parser.parse_args()
    runs = args.runs or (1 if args.quick else 3)
    started = time.perf_counter()
    peer_runs = {peer: int(n) for peer, n in (item.split("=") for item in args.peer_runs.split(",") if item)}
    raw: dict[str, Any] = {}
    results = collect(args.quick, runs, args.peers.split(","), peer_runs, raw)
    print(table(results), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"quick": args.quick, "runs": runs, "measures": raw}, indent=1))
    if not args.no_write:
        write_results(results, quick=args.quick, runs=runs, seconds=time.perf_counter() - started)


if __name__ == "__main__":
    main()

"""Old commit against new, on one machine: the HTTP measures of bench/web.py run for two
revisions in alternation, so that a regression is told from the machine's drift.

Each revision runs from its own checkout (a detached git worktree in a temporary folder) and
its own virtualenv with its own dependencies, with that revision's own bench/web.py; the
newer side is this checkout unless ``--new`` names another revision. Rounds alternate old,
new, old, new…; a measure's figure per side is the median of its rounds, and the spread is
shown beside it.

Usage::

    python bench/versions.py --old 9ec4ce6 [--new HEAD] [--rounds 3] [--measures post,get] [--quick]

Prints one JSON line: per measure and side, req/s, p50 and p99 (median and min–max), and
new ÷ old. Needs git, wrk, and network access for pip the first time.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("requests_per_s", "p50_ms", "p99_ms")


@dataclass
class Side:
    name: str
    tree: Path
    python: Path


@contextlib.contextmanager
def checkout(revision: str, folder: Path) -> Iterator[Side]:
    """`revision` in a worktree under `folder`, with a virtualenv holding its dependencies."""
    tree = folder / revision
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), revision], check=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(tree / ".venv")], check=True)
        python = tree / ".venv" / "bin" / "python"
        # httpx drives bench/web.py itself; the revision's own pyproject brings the rest.
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-e", str(tree), "httpx"], check=True)
        yield Side(revision, tree, python)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)


def web(side: Side, measure: str, quick: bool) -> dict[str, Any]:
    args = [str(side.python), str(side.tree / "bench" / "web.py"), "--measure", measure]
    done = subprocess.run([*args, *(["--quick"] if quick else [])], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{side.name}: {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])["figures"]
    return figures


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        figure: {
            "median": round(statistics.median(run[figure] for run in runs), 2),
            "min": min(run[figure] for run in runs),
            "max": max(run[figure] for run in runs),
        }
        for figure in FIGURES
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", required=True, help="the older revision (a commit, tag or branch)")
    parser.add_argument("--new", help="the newer revision (default: this checkout as it is)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measures", default="post,get")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    measures = args.measures.split(",")
    with tempfile.TemporaryDirectory(prefix="menagerie-versions-") as folder, contextlib.ExitStack() as stack:
        old = stack.enter_context(checkout(args.old, Path(folder)))
        if args.new:
            new = stack.enter_context(checkout(args.new, Path(folder)))
        else:
            new = Side("this checkout", ROOT, Path(sys.executable))
        runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(args.rounds):
            for side in (old, new):
                for measure in measures:
                    runs.setdefault((measure, side.name), []).append(web(side, measure, args.quick))
                    print(f"  {measure} {side.name} done", file=sys.stderr, flush=True)
    result: dict[str, Any] = {"old": old.name, "new": new.name, "rounds": args.rounds, "measures": {}}
    for measure in measures:
        ours, theirs = summary(runs[(measure, new.name)]), summary(runs[(measure, old.name)])
        result["measures"][measure] = {
            "old": theirs,
            "new": ours,
            "new_vs_old": {
                figure: round(ours[figure]["median"] / theirs[figure]["median"], 2) for figure in FIGURES
            },
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

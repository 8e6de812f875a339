"""Benchmark: start-up time of the command lines' ``--help`` (target: under 2 s each).

Each command runs in a fresh interpreter (``subprocess``), as a user would type it; the figure is the best wall time
over ``--repeats`` runs (on a shared machine other processes only ever add time). The package ``__init__`` imports
torch and MONAI lazily, so ``--help`` never loads them.

Usage::

    python benchmarks/bench_cli_help.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 2.0
COMMANDS = {
    "monai-dymo --help": [sys.executable, "-m", "monai_dymo.cli", "--help"],
    "monai-dymo demo --help": [sys.executable, "-m", "monai_dymo.cli", "demo", "--help"],
    "python -m monai_dymo.data --help": [sys.executable, "-m", "monai_dymo.data", "--help"],
    "python -m monai_dymo.data patterns --help": [sys.executable, "-m", "monai_dymo.data", "patterns", "--help"],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    failed = 0
    print(f"| command | best of {args.repeats} (s) | target < {TARGET_S} s |")
    print("|---|---|---|")
    for name, cmd in COMMANDS.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
            times.append(time.perf_counter() - start)
        best = min(times)
        ok = best < TARGET_S
        failed += not ok
        print(f"| `{name}` | {best:.2f} | {'PASS' if ok else 'FAIL'} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

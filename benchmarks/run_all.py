"""Run every benchmark, then regenerate RESULTS.md and the plot from the JSON they write.

    python benchmarks/run_all.py               # stage efficiency, CPU runtimes, end to end (~30 min on 2 busy cores)
    python benchmarks/run_all.py --quick       # the same on fewer rows (~10 min): a smoke run, not for the record
    python benchmarks/run_all.py --scaling     # also benchmarks/scaling.py (index to 1M, jobs to 1M rows: hours)
    python benchmarks/run_all.py --only-report # just RESULTS.md and results/summary.png from results/*.json

Every benchmark is its own process, one after another (they would compete for the same cores otherwise),
and writes benchmarks/results/<name>.json. A benchmark that fails does not stop the others; its old JSON (if
any) stays, and the failure is listed at the end and in the exit code.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# (name, arguments for the full run, arguments for --quick); outputs go to results/<name>.json.
BENCHMARKS = (
    ("tokenize_stage", [], ["--sample-rows", "1000", "--real-rows", "1000", "--rounds", "2", "--repeats", "2"]),
    ("embed_stage", ["--sample-rows", "1000", "--alpaca-rows", "300", "--rounds", "2", "--alpaca-rounds", "2"],
     ["--sample-rows", "300", "--alpaca-rows", "100", "--rounds", "2", "--alpaca-rounds", "2"]),
    ("index_search_20k", ["--n", "20000", "--rounds", "2"], ["--n", "10000", "--rounds", "2"]),
    ("embed_backends", ["--real-rows", "1000", "--generated-rows", "5000", "--rounds", "1"],
     ["--real-rows", "200", "--generated-rows", "1000", "--rounds", "1"]),
    ("int8_prefilter", [], ["--real-rows", "300", "--generated-rows", "1000"]),
    ("embed_length_bucket", [], ["--real-rows", "600", "--rounds", "1"]),
    # On CPUs with bf16 units and with ../shared/data only (it says so and writes nothing elsewhere); ~1 h in full.
    ("prefilter_agreement", [], ["--dedup-on", "user"]),
    ("ray_overhead", [], ["--pipeline-s", "20", "--idle-s", "10"]),
    ("end_to_end", [], ["--real-rows", "300", "--generated-rows", "2000"]),
    ("many_files", [], ["--files", "500", "--discover-files", "10000"]),
)
# benchmarks/gpu_check.py is not in the list: it runs on a GPU machine (see its docstring).
SCRIPTS = {"index_search_20k": "index_search.py"}


def run(name: str, arguments: list[str], out: Path) -> bool:
    script = HERE / SCRIPTS.get(name, f"{name}.py")
    # Paths relative to the repository (the benchmarks record their command line in their JSON).
    command = [sys.executable, str(script.relative_to(REPO)), *arguments, "--out", str(out.relative_to(REPO))]
    print(f"== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    returncode = subprocess.call(command, cwd=REPO)
    print(f"== {name}: exit {returncode} after {time.perf_counter() - started:.0f} s", flush=True)
    return returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rows; results go to results/quick/")
    parser.add_argument("--scaling", action="store_true", help="also run benchmarks/scaling.py (hours)")
    parser.add_argument("--only-report", action="store_true", help="only regenerate RESULTS.md and the plot")
    args = parser.parse_args(argv)
    results = HERE / "results" / ("quick" if args.quick else "")
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    if not args.only_report:
        for name, full, quick in BENCHMARKS:
            if not run(name, quick if args.quick else full, results / f"{name}.json"):
                failed.append(name)
        if args.scaling and not run("scaling", [], results / "scaling.json"):
            failed.append("scaling")
    from results_report import write_report

    write_report(results, HERE / ("RESULTS.quick.md" if args.quick else "RESULTS.md"))
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())

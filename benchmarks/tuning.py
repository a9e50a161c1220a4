"""Tune the binarized ResNet-18 example from scratch and compare the result with the shipped
tuning log and with no tuning, all in one run on this machine.

`tvmbits tune` runs as a user would run it (`--trials`, default 200, into a fresh log folder),
timed by the wall clock. Then the model is compiled three times (that log, the shipped
`tuning_logs/<profile>`, `--no-tuning`) and the three builds are timed in alternating rounds
(each round: `--repeat` runs of each build), so that drifts of the machine fall on all three
alike; the figure per build is the median over all its runs. Writes `tuning.md` into `--out`.

    python benchmarks/tuning.py [--trials 200] [--repeat 20] [--rounds 5] [--out benchmarks/results]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import tvm

import tvmbits
from layers import write_report
from tvmbits.tuning_log import RECORDS, cpu_model, shipped_log

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from bireal_resnet18 import build_model, make_input  # noqa: E402


def tune(model: str, log_dir: str, trials: int) -> tuple[float, int, str, int, int]:
    """(seconds, measurements recorded, last progress line of the search, kernels whose confirmed
    choice is a tuned schedule, kernels that kept their default) of one `tvmbits tune` run."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "tvmbits", "tune", model, "--target", "x86_64", "--trials", str(trials),
         "--log", log_dir],
        capture_output=True, text=True, check=True,
    )
    seconds = time.perf_counter() - start
    records = [line for line in (Path(log_dir) / RECORDS).read_text().splitlines() if line.strip()]
    last = [line for line in done.stderr.splitlines() if line.startswith("tune:") and " trials; " in line][-1]
    return (seconds, len(records), last, done.stderr.count(": tuned schedule, median "),
            done.stderr.count(": default schedule kept, median "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    x = make_input(224, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        model = f"{tmp}/bireal.onnx"
        onnx.save(build_model(224), model)
        seconds, measured, last, tuned, kept = tune(model, f"{tmp}/log", args.trials)
        print(f"tuned in {seconds:.0f} s: {last}", flush=True)
        builds = {
            f"tuned here ({args.trials} trials)": dict(tuning_log=f"{tmp}/log"),
            "shipped log": dict(tuning_log=str(shipped_log("x86_64"))),
            "no tuning": dict(use_tuning=False),
        }
        loaded = {name: tvmbits.load(tvmbits.compile(model, "x86_64", **options)) for name, options in builds.items()}
        times = {name: [] for name in builds}
        for _ in range(args.rounds):
            for name, compiled in loaded.items():
                times[name].append(compiled.benchmark(args.repeat, {"input": x})["median"])
    median = {name: float(np.median(t)) for name, t in times.items()}
    shipped = median["shipped log"]
    rows = [f"| {name} | {ms:.3f} | {ms / shipped:.3f} |" for name, ms in median.items()]
    report = "\n".join([
        "# Tuning the binarized ResNet-18 example: a fresh run vs the shipped log",
        "",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores; tvmbits {tvmbits.__version__} on TVM {tvm.__version__}; "
        f"shipped log: tuning_logs/x86_64.",
        "",
        f"`tvmbits tune --trials {args.trials}` took {seconds / 60:.1f} min and recorded {measured} "
        f"measurements (last progress line of the search: `{last}`); re-timed against each other at the end, "
        f"{tuned} kernels' confirmed choice is a tuned schedule and {kept} kept their default.",
        "",
        f"Latency of the whole model, median over {args.rounds} alternating rounds of the median of {args.repeat} runs:",
        "",
        "| build | ms | vs shipped log |",
        "|---|---|---|",
        *rows,
        "",
    ])
    print(f"wrote {write_report(args.out, 'tuning.md', report)}")


if __name__ == "__main__":
    main()

"""Every performance figure of the project in one table, each with its same-run baseline.

Runs each benchmark script in its own process (so peak memory is per figure) and collects
the RESULT lines they print (benchmarks/common.py `emit`).

  python benchmarks/run_all.py            # CPU-sized settings
  python benchmarks/run_all.py --quick    # smaller settings, a few minutes
"""

import json
import os
import subprocess
import sys

from absl import app, flags

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

flags.DEFINE_bool("quick", False, "Smaller settings (skips the 259 M KTH step).")
FLAGS = flags.FLAGS


def scripts(quick: bool) -> list[list[str]]:
    return [
        ["bench_loader.py", "--batches=10" if quick else "--batches=30"],
        ["bench_train_step.py", "--repeats=2"] + (["--nokth"] if quick else []),
        ["bench_train_memory.py"] + (["--config=digits_demo", "--batch=64"] if quick else []),
        ["bench_rollout.py"]
        + (["--batch=4", "--frames=10", "--ddim_steps=20", "--dpm_steps=10"] if quick else []),
        ["bench_vq.py", "--batch=4" if quick else "--batch=8"],
        ["bench_i3d.py", "--batch=1", "--frames=16" if quick else "--frames=40", "--repeats=1"],
    ]


def main(argv):
    del argv
    rows = []
    for command in scripts(FLAGS.quick):
        print(f"running {' '.join(command)} …", flush=True)
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, command[0])] + command[1:],
            capture_output=True,
            text=True,
        )
        lines = [
            line.split("\t", 1)[1]
            for line in done.stdout.splitlines()
            if line.startswith("RESULT\t")
        ]
        if done.returncode != 0 or not lines:
            rows.append(
                dict(figure=command[0], error=(done.stderr.strip().splitlines() or ["?"])[-1])
            )
        rows += [json.loads(line) for line in lines]
    print(f"\nhardware: {common.hardware()}\n")
    print("| figure | value | baseline (same run) | ratio | peak RSS |")
    print("|---|---|---|---|---|")
    for row in rows:
        if "error" in row:
            print(f"| {row['figure']} | failed: {row['error'][:80]} | | | |")
            continue
        print(
            f"| {row['figure']} | {row['value']:.3g} {row['unit']} | {row['baseline']}: "
            f"{row['baseline_value']:.3g} | {row['ratio']:.2f}× | {row['peak_rss_gb']:.2f} GB |"
        )


if __name__ == "__main__":
    app.run(main)

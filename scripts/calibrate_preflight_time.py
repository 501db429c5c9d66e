"""Measure the constants of the pre-flight time model (`skymosaic.preflight`).

    PYTHONPATH=src python scripts/calibrate_preflight_time.py [WORK_DIR]

Runs the small demo survey and a few synthetic surveys (mono and colour, stacked and
direct) with ``run.threads`` = 1 and 2, reads each run's work units
(``run.json["preflight"]["time"]["work"]``) and measured phase times (``timings_s``),
and prints the least-squares constants: seconds per Mpx of each phase (plus seconds per
frame for verify and stack), and the parallel fraction of each phase from the 2-thread
runs. It then prints the ratio of estimated to measured time of each run with the
constants in the package. Takes about 3 minutes on one core.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from skymosaic.config import Config
from skymosaic.demo import DEMO_SURVEYS
from skymosaic.pipeline import run_pipeline
from skymosaic.preflight import SECONDS_PER_FRAME, SECONDS_PER_MPX, estimate_time
from skymosaic.synth import make_survey, write_survey

SURVEYS = {
    "demo-small": dict(DEMO_SURVEYS["small"], seed=1),
    "mono-stacked": dict(n_x=3, n_y=2, frame_shape=(256, 256), channels=1, frames_per_pointing=4,
                         seed=2),
    "colour-stacked": dict(n_x=4, n_y=3, frame_shape=(200, 300), channels=3,
                           frames_per_pointing=3, seed=3),
    "mono-large": dict(n_x=2, n_y=2, frame_shape=(512, 640), channels=1, frames_per_pointing=6,
                       seed=4),
    "colour-direct": dict(n_x=5, n_y=2, frame_shape=(300, 300), channels=3, seed=5),
}
PHASES = tuple(SECONDS_PER_MPX)


def _run(name: str, frames: Path, out: Path, threads: int) -> dict:
    tree = {"run": {"threads": threads}, "output": {"report": False}}
    if name.endswith("direct"):
        tree["stack"] = {"enabled": False}
    run_pipeline([frames], out, Config.model_validate(tree))
    report = json.loads((out / "run.json").read_text())
    return {"name": name, "threads": threads, "work": report["preflight"]["time"]["work"],
            "frames": report["preflight"]["n_frames"], "measured": report["timings_s"]}


def main(work_dir: Path) -> None:
    runs = []
    for name, params in SURVEYS.items():
        frames = work_dir / name / "frames"
        write_survey(make_survey(**params), frames)
        for threads in (1, 2):
            runs.append(_run(name, frames, work_dir / name / f"out{threads}", threads))
            print(name, threads, runs[-1]["measured"], flush=True)
    ones = [r for r in runs if r["threads"] == 1]
    print("\nseconds per Mpx (and per frame), one thread:")
    for phase in PHASES:
        y = np.array([r["measured"].get(phase, 0.0) for r in ones])
        cols = [[r["work"][phase] for r in ones]]
        if phase in SECONDS_PER_FRAME:
            cols.append([r["frames"] if r["work"][phase] > 0 else 0 for r in ones])
        coef = np.linalg.lstsq(np.array(cols, float).T, y, rcond=None)[0]
        print(f"  {phase:10s}", " ".join(f"{c:.4g}" for c in coef))
    print("\nparallel fraction (2 threads against 1):")
    for phase in PHASES:
        t1 = sum(r["measured"].get(phase, 0.0) for r in ones)
        t2 = sum(r["measured"].get(phase, 0.0) for r in runs if r["threads"] == 2)
        print(f"  {phase:10s} {min(1.0, max(0.0, 2 * (1 - t2 / t1))) if t1 else 0.0:.2f}")
    print("\nestimated / measured with the package's constants:")
    for r in runs:
        est = estimate_time(dict(r["work"], frames=r["frames"]), threads=r["threads"])
        measured = sum(r["measured"].get(p, 0.0) for p in PHASES)
        per = ", ".join(f"{p} {est.seconds[p]:.2f}/{r['measured'].get(p, 0.0):.2f}" for p in PHASES)
        print(f"  {r['name']:15s} {r['threads']}t total {est.total_s:.2f}/{measured:.2f} s "
              f"= {est.total_s / measured:.2f} ({per})")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))

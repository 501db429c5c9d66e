"""End to end: ``skymosaic run`` (default settings) vs SWarp and reproject on one survey.

The survey is `bench_seams`'s (its `_prepare`: Seestar-sized 1080 x 1920 px frames, 20 %
overlap, per-frame gains, offsets and sky gradients, a multi-scale nebula), at each size of
``--frames`` (n frames laid out as the most square ``n_x x n_y`` grid), mono and colour.
Each tool runs in a fresh worker subprocess (`_common.run_worker`): wall time is the
whole worker process (interpreter start-up and imports included) and peak memory the
larger of the worker's ``VmHWM`` and the polled (20 ms) resident memory of its process
tree (SWarp runs as a child, skymosaic's verify pool too).

* **skymosaic**: ``skymosaic run FRAMES -o OUT --fresh`` through `skymosaic.cli.main`
  in the worker (default settings: classic mode, quality, photometry with sky surfaces,
  preview, report; ``--threads`` and ``--memory-budget`` only when given). Its phase
  times are run.json's ``timings_s``.
* **SWarp** (`bench_seams._run_swarp`): ``SUBTRACT_BACK Y``, onto skymosaic's grid; its
  time is the SWarp runs and the read-back only (``tool_s``: not the weight maps that
  this script writes for the NaN corners).
* **reproject** (`bench_phase5._run_reproject`): ``reproject_and_coadd`` with
  ``match_background=True``, bilinear, onto skymosaic's grid.

Phase growth: between consecutive sizes, each phase's time ratio against the ratios of
the work: pixels in (frames x H x W x channels), pixels out (mosaic), overlaps (the
photometry's ``n_overlaps``); ``time/work`` divides the time ratio by the ratio of the
phase's own work (`PHASE_WORK`): 1 is linear.

Examples
--------
Smoke run (6 frames of 540 x 960, mono)::

    python benchmarks/bench_end_to_end.py --quick

The issue-19 figures::

    python benchmarks/bench_end_to_end.py --frames 30,80 --mono
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit_result, format_bytes, format_table, machine_info, run_worker
from bench_seams import _available, _prepare, _run_swarp, _write_grid

logger = logging.getLogger("bench_end_to_end")

TOOLS = ("skymosaic", "swarp", "reproject")
#: phase -> the work its time should grow with (pixels_in, pixels_out, overlaps)
PHASE_WORK = {"photometry": "overlaps", "coadd": "pixels_out", "coverage_renorm": "pixels_out",
              "write": "pixels_out", "report": "pixels_out", "grid": "pixels_out"}


def _grid_shape(n: int) -> tuple[int, int]:
    """``(n_x, n_y)``: the most square layout of ``n`` frames, ``n_x >= n_y``."""
    n_y = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return n // n_y, n_y


def _survey_args(args: argparse.Namespace, n: int, channels: int) -> argparse.Namespace:
    n_x, n_y = _grid_shape(n)
    return argparse.Namespace(
        n_x=n_x, n_y=n_y, frame_shape=tuple(args.frame_shape), channels=channels, overlap=0.2,
        seed=args.seed, noise_sigma=5.0, sky_level=100.0, sky_gradient=0.3, sky_curvature=0.1,
        nebula_amplitude=30.0, stars_per_deg2=10000.0)


# -- workers ---------------------------------------------------------------------------------


def worker(args: argparse.Namespace) -> None:
    """One tool (or the survey), one process: its result as JSON."""
    workdir = Path(args.workdir)
    if args.worker == "survey":  # in its own process: the orchestrator stays small
        n, channels = (int(v) for v in args.survey.split(","))
        survey = _prepare(_survey_args(args, n, channels), workdir, ["skymosaic"])
        emit_result({"n_frames": len(survey.frames), "n_stars": survey.truth.n_stars})
        return
    import time  # noqa: PLC0415

    t0 = time.perf_counter()
    if args.worker == "skymosaic":
        from skymosaic.cli import main as cli_main  # noqa: PLC0415

        out = workdir / "out_skymosaic"
        argv = ["run", str(workdir / "frames"), "-o", str(out), "--fresh", "--log-level", "WARNING"]
        if args.threads:
            argv += ["--threads", str(args.threads)]
        if args.memory_budget:
            argv += ["--memory-budget", args.memory_budget]
        code = cli_main(argv)
        if code != 0:
            raise SystemExit(f"skymosaic run exited with {code}")
        report = json.loads((out / "run.json").read_text())
        ph = report.get("photometry", {})
        res = {"mosaic": str(out / "mosaic.fits"), "phases_s": report.get("timings_s", {}),
               "n_overlaps": ph.get("n_overlaps"), "photometry_s": ph.get("timings_s", {})}
    elif args.worker == "swarp":
        res = _run_swarp(workdir / "frames", workdir / "work_swarp", workdir / "grid.hdr",
                         workdir / "mosaic_swarp.fits", args.threads or os.cpu_count())
    else:
        import numpy as np  # noqa: PLC0415
        from bench_phase5 import _run_reproject  # noqa: PLC0415

        np.random.seed(args.seed)  # noqa: NPY002  # reproject's SGD uses the global state
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = _run_reproject(workdir / "frames", workdir / "out_skymosaic" / "mosaic.fits",
                                 workdir / "mosaic_reproject.fits", match=True)
    emit_result({"wall_s": time.perf_counter() - t0, **res})


# -- orchestration -------------------------------------------------------------------------


def _mosaic_pixels(path: str) -> int:
    from astropy.io import fits  # noqa: PLC0415

    hdr = fits.getheader(path)
    return math.prod(int(hdr[f"NAXIS{k}"]) for k in range(1, int(hdr["NAXIS"]) + 1))


def _one_size(args: argparse.Namespace, n: int, channels: int, workdir: Path) -> dict:
    common = ["--workdir", str(workdir), "--seed", str(args.seed), "--threads", str(args.threads),
              "--frame-shape", *map(str, args.frame_shape)]
    me = str(Path(__file__).resolve())
    survey = run_worker([me, "--worker", "survey", "--survey", f"{n},{channels}", *common])
    h, w = args.frame_shape
    row: dict = {"n_frames": survey["n_frames"], "channels": channels,
                 "pixels_in": survey["n_frames"] * h * w * channels, "tools": {}}
    for tool in args.tools:
        why = _available(tool)
        if why is not None:
            logger.warning("%s: %s", tool, why)
            row["tools"][tool] = {"skipped": why}
            continue
        logger.info("%d frames x %d ch: running %s ...", n, channels, tool)
        extra = ["--memory-budget", args.memory_budget] if args.memory_budget else []
        try:
            res = run_worker([me, "--worker", tool, *common, *extra], timeout=args.timeout)
        except RuntimeError as err:
            if tool == "skymosaic":
                raise
            logger.warning("%s failed: %s", tool, str(err)[-1500:])
            row["tools"][tool] = {"skipped": f"failed: {str(err).splitlines()[0][:120]}"}
            continue
        res["peak"] = max(res["peak_rss"], res["poll_peak_rss"])
        res["time_s"] = res["tool_s"] if tool == "swarp" else res["elapsed_s"]
        if tool == "skymosaic":
            _write_grid(Path(res["mosaic"]), workdir)
            row["pixels_out"] = _mosaic_pixels(res["mosaic"])
            row["overlaps"] = res.get("n_overlaps")
        row["tools"][tool] = res
        logger.info("  %s: %.1f s, peak %s", tool, res["time_s"], format_bytes(res["peak"]))
    return row


def _report(args: argparse.Namespace, machine: dict, rows: list[dict], command: str) -> None:
    import skymosaic  # noqa: PLC0415

    print()
    print(f"## bench_end_to_end (skymosaic {skymosaic.__version__})")
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in machine.items()))
    print("command: " + command)
    print(f"survey: bench_seams' (frames {args.frame_shape[0]}x{args.frame_shape[1]}, overlap 0.2,"
          f" seed {args.seed}); load average at the end: "
          + ", ".join(f"{v:.2f}" for v in os.getloadavg()))
    table = []
    for r in rows:
        sw = r["tools"].get("swarp", {})
        for tool, res in r["tools"].items():
            cell = {"frames": r["n_frames"], "ch": r["channels"], "tool": tool}
            if "skipped" in res:
                table.append({**cell, "wall s": res["skipped"]})
                continue
            cell.update({"wall s": f"{res['time_s']:.1f}", "peak RSS": format_bytes(res["peak"])})
            if "time_s" in sw:
                cell["time / SWarp"] = f"{res['time_s'] / sw['time_s']:.2f}"
                cell["peak / SWarp"] = f"{res['peak'] / sw['peak']:.2f}"
            table.append(cell)
    print()
    print(format_table(table))
    phases = []
    for r in rows:
        sm = r["tools"].get("skymosaic", {})
        phases.append({"frames": r["n_frames"], "ch": r["channels"],
                       "Mpx in": f"{r['pixels_in'] / 1e6:.0f}",
                       "Mpx out": f"{r.get('pixels_out', 0) / 1e6:.0f}",
                       "overlaps": r.get("overlaps"),
                       **{k: f"{v:.1f}" for k, v in sm.get("phases_s", {}).items()}})
    print()
    print("skymosaic phases (s, run.json timings_s):")
    print()
    print(format_table(phases))
    for ch in sorted({r["channels"] for r in rows}):
        mine = [r for r in rows
                if r["channels"] == ch and "phases_s" in r["tools"].get("skymosaic", {})]
        for a, b in itertools.pairwise(mine):
            _growth(a, b)


def _growth(a: dict, b: dict) -> None:
    work = {k: (b.get(k) or 0) / max(a.get(k) or 0, 1)
            for k in ("pixels_in", "pixels_out", "overlaps")}
    pa, pb = a["tools"]["skymosaic"]["phases_s"], b["tools"]["skymosaic"]["phases_s"]
    lines = []
    for phase, tb in pb.items():
        ta = pa.get(phase)
        if not ta or ta < 0.05:
            continue
        unit = PHASE_WORK.get(phase, "pixels_in")
        lines.append({"phase": phase, f"{a['n_frames']} s": f"{ta:.1f}",
                      f"{b['n_frames']} s": f"{tb:.1f}", "x time": f"{tb / ta:.2f}",
                      "x px in": f"{work['pixels_in']:.2f}",
                      "x px out": f"{work['pixels_out']:.2f}",
                      "x overlaps": f"{work['overlaps']:.2f}",
                      "work": unit, "time/work": f"{tb / ta / work[unit]:.2f}"})
    print()
    print(f"phase growth {a['n_frames']} -> {b['n_frames']} frames, {a['channels']} ch "
          "(time/work 1 = linear):")
    print()
    print(format_table(lines))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default="30,80,200",
                   help="survey sizes, comma-separated (default 30,80,200)")
    colour = p.add_mutually_exclusive_group()
    colour.add_argument("--colour", dest="channels", action="store_const", const=(3,),
                        help="colour frames only (default: mono, then colour)")
    colour.add_argument("--mono", dest="channels", action="store_const", const=(1,),
                        help="mono frames only")
    p.add_argument("--quick", action="store_true", help="smoke run: 6 mono frames of 540 x 960")
    p.add_argument("--frame-shape", type=int, nargs=2, default=(1080, 1920), metavar=("H", "W"),
                   help="frame size (default 1080 1920, Seestar)")
    p.add_argument("--tools", nargs="+", choices=TOOLS, default=list(TOOLS),
                   help="subset of tools (skymosaic always runs: it defines the grid)")
    p.add_argument("--threads", type=int, default=0, help="skymosaic/SWarp threads (0 = all)")
    p.add_argument("--memory-budget", default=None,
                   help="skymosaic --memory-budget (default: its own)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="per tool, seconds")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--keep", type=Path, default=None, help="keep the surveys and outputs here")
    p.add_argument("--worker", choices=("survey", *TOOLS), help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    p.add_argument("--survey", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.frames, args.frame_shape, args.channels = "6", (540, 960), args.channels or (1,)
    channels = args.channels or (1, 3)
    try:
        sizes = [int(v) for v in args.frames.split(",")]
    except ValueError:
        p.error(f"--frames must be integers separated by commas, got {args.frames!r}")
    if min(sizes) < 2 or min(args.frame_shape) < 128:
        p.error("need at least 2 frames of at least 128 px")
    args.tools = ["skymosaic", *(t for t in args.tools if t != "skymosaic")]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    command = " ".join([Path(sys.executable).name, *(sys.argv if argv is None else argv)])
    machine = machine_info()
    rows = []
    for ch in channels:
        for n in sizes:
            if args.keep is not None:
                work = args.keep / f"n{n}_c{ch}"
                work.mkdir(parents=True, exist_ok=True)
                rows.append(_one_size(args, n, ch, work))
            else:
                with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
                    rows.append(_one_size(args, n, ch, Path(tmp)))
    _report(args, machine, rows, command)
    if args.json is not None:
        args.json.write_text(json.dumps({"machine": machine, "command": command, "rows": rows},
                                        indent=1, default=str))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

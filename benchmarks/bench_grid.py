"""Benchmark of grid-mode assembly (`skymosaic.grid.assemble_tiles`) on a synthetic survey.

An ``n x n`` grid of square tiles (default 10 x 10 = 100 tiles of 256 px, 30 % overlap) is
cut from one smooth sky with stars ``S`` and observed as ``(S + noise - b_k) / g_k`` with
known gains ``g_k ~ U(0.8, 1.25)`` and offsets ``b_k ~ U(-40, 40)`` (noise sigma 1), as in
``tests/test_grid.py``. Everything is generated in memory.

Each assembly step is run and measured on its own, in the order `assemble_tiles` runs
them, with the same options:

1. valid masks + overlap graph (`valid_mask`, `find_overlaps`);
2. pairwise regressions (`pairwise_relations`);
3. global gain/offset solve (`solve_gains_offsets`, every channel);
4. applying the gains and offsets to the tiles (`apply_gains_offsets`);
5. background matching (`match_backgrounds` + `apply_background_match`);
6. blending (`blend_tiles`, pyramid);

then the whole `assemble_tiles` (pyramid, photometry on), the truth-corrected assembly
(tiles ``S + noise``, no photometry, pyramid) and a plain weighted mean (``blend="mean"``,
``photometry=None``) for comparison.

Time is wall-clock (``time.perf_counter``). Memory is the peak of this process's
anonymous resident memory (``RssAnon``, sampled every 10 ms in a thread) minus its value
just before the step, after ``gc.collect()`` and ``malloc_trim(0)`` (so freed heap of an
earlier step is given back and not reused for free); it includes what the step returns.
A spike shorter than 10 ms can be missed. With ``--tracemalloc`` every step is run a
second time under `tracemalloc` to give the exact peak of Python/NumPy allocations
(OpenCV's internal buffers are not counted there).

Quality: the recovered gains are compared to the truth after removing the common gauge
factor (``ratio_k = G_k / g_k``, divided by its geometric mean); offsets likewise after the
global affine gauge, in noise sigmas. The seam score (`skymosaic.synth.seam_score`, tile
borders +-2 px) of each assembly is compared with the truth-corrected one.

Example::

    python benchmarks/bench_grid.py --n 10 --tile 256 --overlap 0.3 --channels 1 --seed 0
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info

from skymosaic._tiles import PlacedTile
from skymosaic.blend import blend_tiles
from skymosaic.grid import assemble_tiles
from skymosaic.photometry import (
    PhotometryOptions,
    apply_background_match,
    apply_gains_offsets,
    find_overlaps,
    match_backgrounds,
    pairwise_relations,
    solve_gains_offsets,
    valid_mask,
)
from skymosaic.synth import seam_score

logger = logging.getLogger("bench_grid")

SIGMA = 1.0


# ------------------------------------------------------------------------------ memory
def _anon_rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc
    _LIBC = None


def _release() -> None:
    """Collect garbage and give freed heap back to the OS (glibc), before a baseline."""
    gc.collect()
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


class PeakAnonRSS:
    """Context manager sampling ``RssAnon`` of this process; ``peak``/``start`` in bytes."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = self.start = self.end = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _anon_rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakAnonRSS:
        self.start = self.peak = _anon_rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.end = _anon_rss()
        self.peak = max(self.peak, self.end)


def measure(name: str, fn: Callable[[], Any], rows: list[dict], *, traced: bool) -> Any:
    """Run ``fn`` once measured (time, sampled RssAnon), optionally again under tracemalloc."""
    _release()
    with PeakAnonRSS() as mem:
        t0 = time.perf_counter()
        value = fn()
        dt = time.perf_counter() - t0
        _release()  # so that "kept" is what the step's result holds, not freed heap
    row = {"step": name, "s": dt, "peak_mib": (mem.peak - mem.start) / 2**20,
           "kept_mib": (mem.end - mem.start) / 2**20}
    if traced:
        _release()
        tracemalloc.start()
        again = fn()
        row["traced_peak_mib"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        del again
    rows.append(row)
    print(f"  {name:44s} {dt:8.2f} s  peak +{row['peak_mib']:7.1f} MiB", file=sys.stderr,
          flush=True)
    return value


# ------------------------------------------------------------------------------ survey
def smooth_sky(channels: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth sky (sines) plus Gaussian stars, float64 (C, H, W); as tests/test_grid.py."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sky = np.empty((channels, h, w))
    for c in range(channels):
        sky[c] = 100 + 20 * c + 8 * np.sin(xx / 70.0 + c) + 6 * np.cos(yy / 55.0)
        n = h * w // 150
        sy, sx = rng.uniform(0, h, n), rng.uniform(0, w, n)
        stars = np.zeros((h, w))
        np.add.at(stars, (sy.astype(int), sx.astype(int)), rng.pareto(1.5, n) * 600 + 200)
        sky[c] += ndimage.gaussian_filter(stars, 1.4)
    return sky


def make_grid(n: int, tile: int, overlap: float, channels: int, seed: int) -> dict:
    """Observed tiles, truth-corrected tiles, truth, border mask, canvas shape, gains, offsets."""
    rng = np.random.default_rng(seed)
    step = max(1, round(tile * (1.0 - overlap)))
    h = w = step * (n - 1) + tile
    truth = smooth_sky(channels, h, w, rng)
    gains = rng.uniform(0.8, 1.25, (n * n, channels))
    offsets = rng.uniform(-40, 40, (n * n, channels))
    tiles, fixed = [], []
    for k in range(n * n):
        r, q = divmod(k, n)
        y0, x0 = r * step, q * step
        patch = truth[:, y0:y0 + tile, x0:x0 + tile] + rng.normal(0, SIGMA, (channels, tile, tile))
        obs = (patch - offsets[k][:, None, None]) / gains[k][:, None, None]
        tiles.append(PlacedTile(obs.astype(np.float32), y0, x0, tile_id=f"t{k}"))
        fixed.append(PlacedTile(patch.astype(np.float32), y0, x0, tile_id=f"t{k}"))
    borders = np.zeros((h, w), bool)
    for t in tiles:
        for yy in (t.y0, t.y0 + tile - 1):
            borders[max(yy - 2, 0):yy + 3, t.x0:t.x0 + tile] = True
        for xx in (t.x0, t.x0 + tile - 1):
            borders[t.y0:t.y0 + tile, max(xx - 2, 0):xx + 3] = True
    return {"tiles": tiles, "fixed": fixed, "truth": truth.astype(np.float32), "borders": borders,
            "shape": (h, w), "gains": gains, "offsets": offsets, "step": step}


# ----------------------------------------------------------------------------- quality
def gain_error(solved: np.ndarray, true_g: np.ndarray) -> tuple[float, float]:
    """Max and RMS of ``|(G_k / g_k) / gm - 1|`` (gm: geometric mean per channel).

    Tiles are ``(S - b) / g``, so the solved gain should be ``G = lam g`` for one ``lam``.
    """
    ratio = np.asarray(solved, float) / true_g
    ratio /= np.exp(np.mean(np.log(ratio), axis=0))
    err = ratio - 1.0
    return float(np.abs(err).max()), float(np.sqrt(np.mean(err**2)))


def offset_error(gains: np.ndarray, offsets: np.ndarray, true_g: np.ndarray,
                 true_b: np.ndarray) -> float:
    """Max spread of the level error, in noise sigmas of the corrected data.

    A tile corrected to ``G obs + O = (G/g) (S + n - b) + O`` should be
    ``lam (S + n) + mu``, i.e. ``O - (G/g) b = mu`` for all tiles: report
    ``max |O - (G/g) b - median| / (lam sigma)``.
    """
    scale = np.asarray(gains, float) / true_g
    lam = np.exp(np.mean(np.log(scale), axis=0))
    level = np.asarray(offsets, float) - scale * true_b
    level -= np.median(level, axis=0)
    return float(np.abs(level / (lam * SIGMA)).max())


# -------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10, help="tiles per side (n x n tiles)")
    p.add_argument("--tile", type=int, default=256, help="tile side, px")
    p.add_argument("--overlap", type=float, default=0.3, help="overlap fraction of a tile")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--background", action=argparse.BooleanOptionalAction, default=True,
                   help="background matching after the solve (PhotometryOptions.background)")
    p.add_argument("--tracemalloc", action="store_true",
                   help="also run each step under tracemalloc (exact NumPy peaks, 2x the time)")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    if args.n < 2 or args.tile < 16 or not 0.0 < args.overlap < 0.9 or args.channels < 1:
        p.error("need --n >= 2, --tile >= 16, 0 < --overlap < 0.9, --channels >= 1")
    logging.basicConfig(level=logging.WARNING)

    t0 = time.perf_counter()
    g = make_grid(args.n, args.tile, args.overlap, args.channels, args.seed)
    gen_s = time.perf_counter() - t0
    tiles, shape, n_ch = g["tiles"], g["shape"], args.channels
    tile_mib = sum(t.data.nbytes for t in tiles) / 2**20
    print(f"{len(tiles)} tiles of {n_ch}x{args.tile}x{args.tile} float32 ({tile_mib:.1f} MiB), "
          f"step {g['step']} px, canvas {shape[0]}x{shape[1]}; generated in {gen_s:.1f} s",
          file=sys.stderr)
    opts = PhotometryOptions(background=args.background)
    rows: list[dict] = []
    tr = args.tracemalloc

    # -- the steps, one by one, exactly as normalize_tiles / assemble_tiles chain them
    def step_overlaps():
        masks = [np.asarray(valid_mask(t.data, eps=opts.eps)) for t in tiles]
        return masks, find_overlaps(tiles, min_pixels=opts.min_overlap_pixels, masks=masks)

    masks, overlaps = measure("1. valid masks + overlap graph", step_overlaps, rows, traced=tr)

    def step_relations():
        return pairwise_relations(tiles, overlaps, max_samples=opts.max_samples, seed=opts.seed,
                                  masks=masks, min_points=opts.min_points,
                                  min_dynamic_range=opts.min_dynamic_range,
                                  gain_from=opts.gain_from)

    relations = measure("2. pairwise regressions", step_relations, rows, traced=tr)

    def step_solve():
        gs, os_ = np.ones((len(tiles), n_ch)), np.zeros((len(tiles), n_ch))
        for c in range(n_ch):
            sol = solve_gains_offsets(len(tiles), relations, channel=c, gauge=opts.gauge,
                                      prior_weight=opts.prior_weight, robust_iter=opts.robust_iter)
            gs[:, c], os_[:, c] = sol.gains, sol.offsets
        return gs, os_

    gains, offs = measure("3. global gain/offset solve", step_solve, rows, traced=tr)

    def step_apply():
        return [PlacedTile(np.asarray(apply_gains_offsets(t.data, gains[k], offs[k]), np.float32),
                           t.y0, t.x0, t.weight, t.tile_id) for k, t in enumerate(tiles)]

    corrected = measure("4. apply gains/offsets", step_apply, rows, traced=tr)
    bg_offsets = np.zeros_like(offs)
    if args.background:
        def step_background(before=corrected):
            match = match_backgrounds(before, target=opts.background_target,
                                      plane=opts.background_plane, overlaps=overlaps, masks=masks)
            return apply_background_match(before, match), match

        corrected, match = measure("5. background matching", step_background, rows, traced=tr)
        bg_offsets = np.asarray(match.offsets, float)

    blended = measure("6. blending (pyramid)",
                      lambda final=corrected: blend_tiles(final, shape, method="pyramid"),
                      rows, traced=tr)
    del blended
    rows.append({"step": "sum of steps 1-6", "s": sum(r["s"] for r in rows)})
    del corrected

    # -- whole assemblies
    full = measure("assemble_tiles (photometry + pyramid)",
                   lambda: assemble_tiles(tiles, shape, photometry=opts, blend="pyramid"),
                   rows, traced=tr)
    ideal = measure("truth-corrected tiles, pyramid, no photometry",
                    lambda: assemble_tiles(g["fixed"], shape, photometry=None, blend="pyramid"),
                    rows, traced=tr)
    plain = measure("plain weighted mean (no photometry)",
                    lambda: assemble_tiles(tiles, shape, photometry=None, blend="mean"),
                    rows, traced=tr)

    # -- quality
    truth, borders = g["truth"], g["borders"]
    seams = {
        "assemble_tiles": seam_score(full.data, truth, borders),
        "truth-corrected": seam_score(ideal.data, truth, borders),
        "plain mean": seam_score(plain.data, truth, borders),
    }
    ph = full.report["photometry"]
    g_max, g_rms = gain_error(np.asarray(ph["gains"], float), g["gains"])
    g_max_steps, _ = gain_error(gains, g["gains"])
    o_solve = offset_error(gains, offs, g["gains"], g["offsets"])
    o_total = offset_error(gains, offs + bg_offsets, g["gains"], g["offsets"])
    n_ov = len(overlaps)
    counts = (f"{n_ov} overlaps; relations (pairs x channels) ok/offset-only/failed = "
              f"{ph['n_relations_ok']}/{ph['n_relations_offset_only']}/{ph['n_relations_failed']}; "
              f"photometry mode "
              f"{full.report['photometry_mode']}; blend {full.report['blend']} "
              f"({full.report['n_pyramid']} pyramid pairs, {full.report['levels_used']} levels, "
              f"{full.report['n_feather']} feathered)")

    # -- report
    cols = ["step", "s", "peak_mib", "kept_mib"] + (["traced_peak_mib"] if tr else [])
    table = [{k: (f"{v:.2f}" if k == "s" else f"{v:.1f}" if isinstance(v, float) else v)
              for k, v in r.items()} for r in rows]
    info = machine_info()
    print()
    cmd = " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: python benchmarks/bench_grid.py {cmd}")
    print(f"Machine: {info['cpu']}, {info['usable_cpus']} usable CPUs, {info['ram']} RAM, "
          f"load {info['load_avg_1m']}, Python {info['python']}")
    print(f"Survey: {len(tiles)} tiles of {n_ch}x{args.tile}x{args.tile} ({tile_mib:.1f} MiB), "
          f"overlap {args.overlap:.2f} (step {g['step']} px), canvas {shape[0]}x{shape[1]}, "
          f"generated in {gen_s:.1f} s")
    print(counts)
    print()
    print(format_table(table, cols))
    print()
    print("assemble_tiles internal timings: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in full.report["timings"].items())
          + "; normalize_tiles: "
          + ", ".join(f"{k} {v:.2f} s" for k, v in ph.get("timings", {}).items()))
    print(f"Gain error after the gauge (assemble_tiles): max {g_max:.2e}, rms {g_rms:.2e} "
          f"(step-by-step solve: max {g_max_steps:.2e})")
    print(f"Level error after the gauge: solve {o_solve:.2f} sigma, solve + background "
          f"{o_total:.2f} sigma (max over tiles)")
    print("Seam score (1 = no seams): "
          + ", ".join(f"{k} {v:.3f}" for k, v in seams.items())
          + "; assemble_tiles / truth-corrected = "
          + f"{seams['assemble_tiles'] / seams['truth-corrected']:.3f}")
    if args.json is not None:
        args.json.write_text(json.dumps({
            "args": vars(args) | {"json": str(args.json)}, "machine": info, "rows": rows,
            "counts": counts, "timings": full.report["timings"],
            "photometry_timings": ph.get("timings"),
            "gain_error_max": g_max, "gain_error_rms": g_rms, "level_error_solve_sigma": o_solve,
            "level_error_total_sigma": o_total, "seam": seams, "generate_s": gen_s,
        }, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

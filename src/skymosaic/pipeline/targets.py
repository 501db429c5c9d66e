"""Several sky-disjoint targets (`skymosaic.plan.targets`): the split after discovery,
the pre-flight estimates `skymosaic plan` and `inspect` print, and the run of one mosaic
per target, each in ``OUT/<target>/`` with its own manifest and run.json.

No resume fingerprint of its own: each target's run resumes its own phases (its catalog
fingerprint is the run's, the target's name and its frames).
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from skymosaic._manifest import Manifest, fingerprint
from skymosaic._space import format_bytes
from skymosaic.config import Config
from skymosaic.io import FrameInfo, write_json
from skymosaic.plan.targets import Target, TargetError, TargetSplit, split_targets
from skymosaic.preflight import PreflightError, PreflightEstimate, estimate_run

from ._catalog import Catalog
from ._report import FramesReport, RunReport
from ._run import NoUsableFramesError, Run, RunResult
from .canvas import choose_grid, estimate_frames

__all__ = ["TargetEstimate", "estimate_targets", "find_run_targets", "run", "split_frames"]

logger = logging.getLogger(__name__)


@dataclass
class TargetEstimate:
    """The estimate of one target of `estimate_targets`: its name (None when the frames
    are not split), frames and pre-flight estimate (None, with ``error``, when no output
    grid can be made)."""

    name: str | None
    frames: list[FrameInfo]
    estimate: PreflightEstimate | None = None
    error: str | None = None
    target: Target | None = None

    def to_dict(self) -> dict:
        out = self.target.to_dict() if self.target is not None else {"name": self.name}
        out["frames"] = [f.name for f in self.frames]
        out["estimate"] = None if self.estimate is None else self.estimate.to_dict()
        if self.error is not None:
            out["error"] = self.error
        return out


def split_frames(frames: Sequence[FrameInfo], config: Config) -> TargetSplit | None:
    """The sky-disjoint targets of ``frames`` as a classic run splits them
    (`skymosaic.plan.targets`; ``targets.*`` settings), or None when ``targets.split`` is
    off or there is no frame.

    Raises
    ------
    TargetError
        When ``targets.select`` or ``targets.region`` match no frame.
    """
    cfg = config.targets
    if not cfg.split or not frames:
        return None
    return split_targets(np.stack([np.asarray(f.footprint) for f in frames]),
                         objects=[f.object for f in frames], names=[f.name for f in frames],
                         link_diagonals=cfg.link_diagonals, select=cfg.select, region=cfg.region)


def estimate_targets(frames: Sequence[FrameInfo], config: Config
                     ) -> tuple[list[TargetEstimate], dict[str, str]]:
    """The pre-flight estimate of each target a classic run of ``frames`` would mosaic
    (`split_frames`, then `estimate_frames` per target), and the lone frames it would
    leave out (name -> reason). Headers only: `skymosaic plan` and `inspect` print it.

    Raises
    ------
    TargetError
        When ``targets.select`` or ``targets.region`` match no frame.
    """
    frames = list(frames)
    split = split_frames(frames, config)
    if split is None:
        parts = [TargetEstimate(None, frames)]
        lone: dict[str, str] = {}
    else:
        parts = [TargetEstimate(t.name, [frames[k] for k in t.frames], target=t)
                 for t in split.targets]
        lone = {frames[k].name: reason for k, reason in split.lone.items()}
    for part in parts:
        if not part.frames:
            continue
        try:
            part.estimate = estimate_frames(part.frames, config)
        except ValueError as err:  # no usable grid (a bad output header, ...)
            part.error = str(err)
    return parts, lone


def find_run_targets(ctx: Run, catalog: Catalog) -> None:
    """Split the catalog into sky-disjoint targets (`skymosaic.plan.targets`): lone far
    frames are rejected, frames outside ``targets.select``/``region`` dropped; sets
    ``ctx.targets`` and ``ctx.target_of``."""
    frames = catalog.frames
    try:
        found = split_frames(frames, ctx.config)
    except TargetError as err:
        ctx.fail("no such target", str(err))
    if found is None:
        return
    for k, reason in found.lone.items():
        catalog.rejected[str(frames[k].path)] = reason  # split_targets warned, naming the frame
    ctx.targets = found.targets
    ctx.target_of = {str(frames[k].path): t.name for t in found.targets for k in t.frames}
    catalog.frames = [f for f in frames if str(f.path) in ctx.target_of]
    ctx.report.targets = {"targets": [t.to_dict() for t in found.targets],
                          "found": found.all_targets, "lone": [frames[k].name for k in found.lone],
                          "not_selected": [frames[k].name for k in found.not_selected]}
    if len(found.targets) > 1:
        logger.info("%d targets: %s", len(found.targets), ", ".join(
            f"{t.name} ({len(t.frames)} frames)" for t in found.targets))


def _target_run(ctx: Run, catalog: Catalog, target: Target) -> tuple[Run, Catalog]:
    """The run (folder ``OUT/<target>/``, its own manifest and run.json) and catalog of a target."""
    out = ctx.out / target.name
    out.mkdir(exist_ok=True)
    sub = copy.copy(ctx)  # shares the config, progress, backend and Dask client
    sub.out, sub.manifest = out, Manifest(out, fresh=ctx.config.run.fresh)
    sub.clustering, sub.diagnostics = None, None
    sub.timings, sub.targets, sub.target_of = {}, [], {}
    parent = ctx.report
    sub.report = RunReport(skymosaic=parent.skymosaic, config_digest=parent.config_digest,
                           mode=parent.mode)
    mine = {p for p, name in ctx.target_of.items() if name == target.name}
    cat = Catalog(frames=[f for f in catalog.frames if str(f.path) in mine],
                  rejected={p: r for p, r in catalog.rejected.items() if p in mine},
                  stats={p: v for p, v in catalog.stats.items() if p in mine},
                  quality={p: v for p, v in catalog.quality.items() if p in mine})
    names = {Path(p).name for p in mine}
    cat.sessions = [s for s in catalog.sessions if set(s["frame_names"]) <= names]
    sub.catalog_fp = fingerprint("target", ctx.catalog_fp, target.name, sorted(mine))
    sub.report.target = target.to_dict()
    sub.report.sessions = cat.sessions
    sub.report.footprints = {k: v for k, v in (parent.footprints or {}).items() if k in names}
    return sub, cat


def _preflight_targets(ctx: Run, runs: list[tuple[Run, Catalog]]) -> None:
    """Every target's pre-flight check, and their disk needs together, before any pixel
    is written (each target's run checks itself again as it starts)."""
    need, estimate = 0, None
    for sub, cat in runs:
        if not cat.frames:
            continue
        grid = choose_grid(cat.frames, ctx.config)
        estimate = estimate_run(cat.frames, grid, ctx.config, out=sub.out)
        need += max(0, estimate.disk_needed_bytes - estimate.reusable_bytes)
        if not estimate.ok:
            message = f"target {sub.out.name}: {estimate.message()}"
            ctx.report.preflight = {sub.out.name: estimate.to_dict()}
            ctx.finish("failed: pre-flight check")
            raise PreflightError(message, estimate)
    free = shutil.disk_usage(ctx.out).free
    if estimate is not None and need > free:
        estimate.problems.append(f"the {len(runs)} targets need {format_bytes(need)} of disk at "
                                 f"{ctx.out} together and {format_bytes(free)} is free")
        ctx.finish("failed: pre-flight check")
        raise PreflightError(estimate.message(), estimate)


def run(ctx: Run, catalog: Catalog, *,
        mosaic: Callable[[Run, Sequence[Path], None, Catalog], RunResult]) -> RunResult:
    """Several sky-disjoint targets: one mosaic each in ``OUT/<target>/`` (``mosaic``, the
    phases of one target); ``OUT/targets.json`` and ``OUT/run.json`` list them. A target
    that fails is reported and the others go on; the run fails when every target does."""
    runs = [_target_run(ctx, catalog, t) for t in ctx.targets]
    _preflight_targets(ctx, runs)
    results, rows = [], []
    for target, (sub, cat) in zip(ctx.targets, runs, strict=True):
        logger.info("target %s: %d frame(s) into %s", target.name, len(cat.frames), sub.out)
        row = {**target.to_dict(), "output": str(sub.out), "status": "ok"}
        try:
            result = mosaic(sub, [f.path for f in cat.frames], None, cat)
        except NoUsableFramesError as err:
            row["status"] = f"failed: {err}"
        else:
            results.append(result)
            row.update(mosaic=str(result.mosaic_path), frames_used=result.report["frames"]["used"])
        rows.append(row)
    assert ctx.report.targets is not None and ctx.report.frames is not None  # find_run_targets
    others = {k: v for k, v in ctx.report.targets.items() if k != "targets"}
    write_json(ctx.out / "targets.json", {"targets": rows, **others})
    ctx.report.targets["targets"] = rows
    ctx.report.frames = FramesReport(found=ctx.report.frames.found, rejected=dict(catalog.rejected),
                                     used=sum(r.report["frames"]["used"] for r in results))
    if not results:
        ctx.fail("no target mosaicked", f"none of the {len(rows)} targets gave a mosaic")
    failed = sum(1 for r in rows if r["status"] != "ok")
    ctx.finish("ok" if not failed else f"partial: {failed} of {len(rows)} target(s) failed")
    if ctx.config.output.report:
        from skymosaic.report import ReportError, write_targets_index  # noqa: PLC0415 - the layer above

        try:
            write_targets_index(ctx.out)
        except (OSError, ReportError) as err:
            logger.warning("targets page not written: %s", err)
    first = results[0]
    return RunResult(ctx.out, first.mosaic_path, first.preview_path, ctx.report.to_dict(),
                     first.data_shape, results)

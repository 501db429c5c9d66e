"""The run report, typed: what ``run.json`` holds (its schema: docs/architecture.md).

Each section a phase writes is a field; `RunReport.to_dict` gives the JSON object, leaving
out the sections a run did not reach (None). Sections whose content belongs to another
package (the pre-flight estimate, the photometric solve, the clusters, grid mode's
per-filter reports) are that package's ``to_dict()`` output, kept as dicts here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from skymosaic._version import __version__
from skymosaic.config import Config, config_digest

__all__ = ["FramesReport", "OutputReport", "RunReport"]


@dataclass
class FramesReport:
    """``frames``: the files found, those used, the rejected ones with their reasons, and
    (after the coadd) one entry per catalogued frame."""

    found: int
    rejected: dict[str, str]  # path -> reason; the catalog's own dict while the run goes on
    used: int | None = None
    list: list[dict] | None = None

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"found": self.found}
        if self.used is not None:
            out["used"] = self.used
        out["rejected"] = self.rejected
        if self.list is not None:
            out["list"] = self.list
        return out


@dataclass
class OutputReport:
    """``output``: the output grid (`OutputGrid.to_dict`) and what the coadd put on it;
    the block layout only in classic mode."""

    grid: dict
    channels: int
    coverage_fraction: float
    max_depth: int
    blocks: int | None = None
    block_rows: int | None = None
    inputs_coadded: int | None = None

    def to_dict(self) -> dict:
        out = {**self.grid, "channels": self.channels, "coverage_fraction": self.coverage_fraction,
               "max_depth": self.max_depth}
        if self.inputs_coadded is not None:  # classic mode: the block layout and the inputs
            out.update(blocks=self.blocks, block_rows=self.block_rows,
                       inputs_coadded=self.inputs_coadded)
        return out


#: The sections `Run.finish` writes: in run.json whenever the run finished (or failed),
#: even when null (``peak_memory_bytes`` where the platform does not say).
_FINISH = ("status", "timings_s", "resume", "scheduler", "backend", "peak_memory_bytes")


@dataclass
class RunReport:
    """Everything ``run.json`` says about one run (one target's run for several targets)."""

    skymosaic: str
    config_digest: str
    mode: str  # "classic", "direct" or "grid"
    plan: dict | None = None  # grid mode: the stack plan read (path, rows, rejected rows)
    targets: dict | None = None  # several targets: the split and, at the end, each target's row
    target: dict | None = None  # one target's run: the target
    frames: FramesReport | None = None
    footprints: dict[str, list] | None = None  # frame name -> sky corners
    solve: dict | None = None  # plate solving (`skymosaic.astrometry`)
    sessions: list[dict] | None = None  # quality sessions
    preflight: dict | None = None  # `PreflightEstimate.to_dict` (several targets: by target)
    clusters: dict | None = None  # `Clustering.to_dict`
    photometry: dict | None = None  # the photometric solve's report
    coverage_renorm: dict[str, float] | None = None
    color: dict | None = None  # the write step's colour calibration (`skymosaic._display`)
    output: OutputReport | None = None
    tiles: list[dict] | None = None  # classic mode: the master tiles
    tiles_failed: Any = None  # classic mode: the groups whose stack failed
    grid: dict | None = None  # grid mode: filter -> its mosaic's report
    products: dict[str, Any] | None = None  # product -> file name (in the output folder)
    status: str | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    resume: dict | None = None
    scheduler: str | None = None
    backend: dict | None = None
    peak_memory_bytes: int | None = None

    @classmethod
    def start(cls, config: Config) -> RunReport:
        """The report of a run of ``config`` before any phase."""
        return cls(skymosaic=__version__, config_digest=config_digest(config),
                   mode="classic" if config.stack.enabled else "direct")

    def to_dict(self) -> dict:
        """The JSON object of run.json."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in _FINISH and self.status is None:
                continue
            if value is None and f.name not in _FINISH:
                continue
            out[f.name] = value.to_dict() if hasattr(value, "to_dict") else value
        return out

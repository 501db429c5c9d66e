"""The run state and the one loop that runs a phase: manifest look-up, run, record, timing.

A phase is a module of this package that exports

- ``NAME``: its manifest entry (``manifest.json``, ``run.json`` ``resume.reused``);
- ``SECTIONS``: the `Sections` of the configuration its resume fingerprint covers;
- ``STORE``: how its artifact is kept for a rerun: ``"pickle"`` (``state/<NAME>.pkl``) or
  ``"meta"`` (JSON in the manifest entry);
- ``TIMING``: its key in ``run.json`` ``timings_s``, or None when it times its own steps;
- ``key(run, inputs, covered)``: the fingerprint parts, ``covered`` being the dump of
  ``SECTIONS`` (a phase places it among its other parts);
- ``run(run, inputs)``: computes the artifact (JSON-ready for ``"meta"``);
- optionally ``reuse(run, inputs, saved)``: what a rerun does with a stored artifact (the
  default returns it as it is), and, for ``"meta"``, ``recorded(run, value)``: the
  keywords of `Manifest.record` (the artifact's file), or None to keep nothing.

`run_phase` sequences these; phases whose resume is finer than one artifact (master tiles,
coadd blocks) record their pieces themselves and are called directly.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Generic, Protocol, TypeVar

from skymosaic._manifest import MANIFEST_NAME, Manifest, fingerprint
from skymosaic.backend import select_backend
from skymosaic.config import Config
from skymosaic.io import write_json
from skymosaic.plan import Clustering
from skymosaic.plan.targets import Target

from ._report import RunReport

__all__ = ["Artifact", "NoUsableFramesError", "Progress", "Run", "RunResult", "Sections",
           "run_phase"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class NoUsableFramesError(RuntimeError):
    """Nothing usable is left to mosaic (the message says why)."""


class Progress:
    """Progress reporting interface (the CLI draws bars; the default draws nothing)."""

    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, phase: str, n: int = 1) -> None:
        pass

    def skip(self, phase: str, n: int = 1) -> None:
        """``n`` items were reused from an earlier run: done, but no measure of speed.

        Bars that show a rate or an ETA should not count them (the default advances).
        """
        self.advance(phase, n)

    def end(self, phase: str) -> None:
        pass


@dataclass
class RunResult:
    """What a run produced: paths of the products and the report written to run.json."""

    out_dir: Path
    mosaic_path: Path
    preview_path: Path | None
    report: dict
    data_shape: tuple[int, ...]
    targets: list[RunResult] = field(default_factory=list)  # several targets: one run each


@dataclass(frozen=True)
class Sections:
    """The configuration sections a phase's resume fingerprint covers.

    ``include`` names whole sections; ``exclude`` maps a section to the fields of it that
    do not change the artifact (a rerun that changes only those reuses it).

    Examples
    --------
    >>> Sections(("cluster",)).dump(Config())  # doctest: +ELLIPSIS
    {'cluster': {...}}
    """

    include: tuple[str, ...]
    exclude: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))

    def dump(self, config: Config) -> dict:
        """The covered part of ``config``, JSON-ready (what the fingerprint hashes)."""
        exclude = {k: set(v) for k, v in self.exclude.items()} or None
        return config.model_dump(mode="json", include=set(self.include), exclude=exclude)


@dataclass
class Artifact(Generic[T]):
    """A phase's product, its fingerprint, and whether it came from an earlier run."""

    value: T
    fingerprint: str
    reused: bool


class Phase(Protocol):
    """What `run_phase` needs of a phase module (see the module docstring)."""

    NAME: str
    SECTIONS: Sections
    STORE: str
    TIMING: str | None

    def key(self, run: Run, inputs: Any, covered: dict) -> list: ...

    def run(self, run: Run, inputs: Any) -> Any: ...


class Run:
    """Bookkeeping of one run: threads, phase timings, the report, resume and its failure path."""

    def __init__(self, out: Path, config: Config, progress: Progress, manifest: Manifest) -> None:
        self.out, self.config, self.progress, self.manifest = out, config, progress, manifest
        self.threads = config.run.threads or (os.cpu_count() or 1)
        self.backend = select_backend(config.run.use_gpu)  # use_gpu = "on" without a GPU fails here
        self.client = None  # a dask.distributed Client when run.scheduler is set
        self.catalog_fp = ""
        self.targets: list[Target] = []  # sky-disjoint targets (`targets.find_run_targets`)
        self.target_of: dict[str, str] = {}  # frame path -> target name
        self.clustering: Clustering | None = None  # the classic grouping (`plan.clustering`)
        self.diagnostics: dict | None = None  # what the photometry diagnostics plot needs
        self.timings: dict[str, float] = {}
        self.report = RunReport.start(config)

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(self.timings.get(name, 0.0) + time.perf_counter() - t0, 4)

    def finish(self, status: str = "ok") -> None:
        """Write ``run.json`` with ``status`` and what the run measured so far."""
        self.report.status = status
        self.report.timings_s = dict(self.timings)
        self.report.resume = {"manifest": MANIFEST_NAME, "fresh": self.config.run.fresh,
                              "reused": dict(self.manifest.reused)}
        self.report.scheduler = self.config.run.scheduler or "threads"
        self.report.backend = self.backend.report()
        self.report.peak_memory_bytes = peak_memory()
        write_json(self.out / "run.json", self.report.to_dict())

    def fail(self, status: str, message: str) -> None:
        self.finish(f"failed: {status}")
        raise NoUsableFramesError(f"{message}; see {self.out / 'run.json'} for the reasons")


def run_phase(run: Run, phase: Phase, inputs: Any) -> Artifact:
    """Run ``phase`` on ``inputs`` unless the manifest holds its artifact for the same
    fingerprint; record what it computed; time both under ``phase.TIMING``."""
    fp = fingerprint(phase.NAME, *phase.key(run, inputs, phase.SECTIONS.dump(run.config)))
    with run.phase(phase.TIMING) if phase.TIMING else _untimed():
        if phase.STORE == "pickle":
            saved = run.manifest.load_pickle(phase.NAME, fp)  # marks it reused
        else:
            entry = run.manifest.lookup(phase.NAME, fp)
            saved = None if entry is None else entry["meta"]
            if saved is not None:
                run.manifest.reused[phase.NAME] = True
        if saved is not None:
            reuse = getattr(phase, "reuse", None)
            value = saved if reuse is None else reuse(run, inputs, saved)
            return Artifact(value, fp, reused=True)
        value = phase.run(run, inputs)
        if phase.STORE == "pickle":
            run.manifest.store_pickle(phase.NAME, fp, value)
        else:
            recorded = getattr(phase, "recorded", None)
            kwargs = {} if recorded is None else recorded(run, value)
            if kwargs is not None:  # None: nothing worth keeping (a mosaic of no pixel)
                run.manifest.record(phase.NAME, fp, meta=value, **kwargs)
    return Artifact(value, fp, reused=False)


@contextmanager
def _untimed() -> Iterator[None]:
    yield


def peak_memory() -> int | None:
    """Peak resident memory of this process so far, bytes (None where unknown)."""
    try:
        import resource  # noqa: PLC0415 - POSIX only
    except ImportError:  # Windows
        return None
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # macOS: bytes, Linux: KiB


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Copy the ``skymosaic`` loggers' records (INFO and above) to ``path`` meanwhile."""
    handler = logging.FileHandler(path, mode="w", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("skymosaic")
    root.addHandler(handler)
    previous = root.level
    if root.level == logging.NOTSET or root.level > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
        handler.close()

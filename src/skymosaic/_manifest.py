"""Resume: the run directory's manifest of artifacts and the fingerprints of their inputs.

Every artifact a run persists (frame catalog, clustering, master tiles, photometric
solution, the coadd accumulation and the final mosaic) gets an entry in
``<run dir>/manifest.json``::

    {"format": 1, "skymosaic": "0.x", "artifacts": {
        "catalog": {"fingerprint": "3f0c...", "path": "state/catalog.pkl",
                    "size": 18233, "sha256": "9b1e...", "meta": {}},
        "coadd": {"fingerprint": "...", "path": "coadd", "meta": {"block_rows": 512,
                  "blocks_done": [0, 512]}},
        ...}}

A fingerprint is a digest of exactly what the artifact depends on: input files (path, size,
modification time), the config values that change it, and upstream fingerprints. An entry is
reused only when its fingerprint matches *and* its file verifies (size and, for the small
state files, SHA-256); everything is written to a temporary name and renamed (see
`skymosaic.io._writer.atomic_path`), so a killed run leaves either the previous complete
file or none. The manifest itself is rewritten atomically after every artifact.

``SKYMOSAIC_CRASH_AFTER`` (test hook, see `crash_point`) makes a run SIGKILL itself at a
chosen point so the tests can check that a killed run resumes to the same mosaic.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import signal
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from skymosaic._version import __version__
from skymosaic.astrometry._cache import content_hash
from skymosaic.io._writer import atomic_path, write_json

__all__ = ["Manifest", "crash_point", "file_signature", "fingerprint"]

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
FORMAT = 1
#: Test hook: ``"<phase>:<n>"`` SIGKILLs the process once ``n`` units of ``phase`` are done.
CRASH_ENV = "SKYMOSAIC_CRASH_AFTER"
_crash_counts: dict[str, int] = {}


def file_signature(path: str | os.PathLike) -> list:
    """``[path, size, mtime_ns]`` of a file: changes whenever the file is rewritten."""
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def fingerprint(*parts: Any) -> str:
    """A short SHA-256 of JSON-serialisable ``parts`` (non-JSON values via ``str``)."""
    payload = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def crash_point(phase: str) -> None:
    """Count one finished unit of ``phase``; SIGKILL this process at the configured count.

    Only active when the environment variable ``SKYMOSAIC_CRASH_AFTER`` is
    ``"<phase>:<n>"`` (e.g. ``"coadd:2"``: killed right after the second coadd block is
    recorded). Used by ``tests/test_resume.py`` to interrupt a run deterministically.
    """
    spec = os.environ.get(CRASH_ENV)
    if not spec or ":" not in spec:
        return
    target, _, count = spec.partition(":")
    if target != phase:
        return
    _crash_counts[phase] = _crash_counts.get(phase, 0) + 1
    if _crash_counts[phase] >= int(count):
        logger.warning("%s=%s: killing the run after %d %s unit(s)", CRASH_ENV, spec,
                       _crash_counts[phase], phase)
        os.kill(os.getpid(), signal.SIGKILL)


class Manifest:
    """The artifacts of one run directory (see the module docstring).

    Parameters
    ----------
    run_dir : path
        The run directory; the manifest is ``run_dir/manifest.json``.
    fresh : bool
        Ignore an existing manifest (every artifact is recomputed and the manifest
        rewritten from scratch).
    """

    def __init__(self, run_dir: str | os.PathLike, *, fresh: bool = False) -> None:
        self.run_dir = Path(run_dir).resolve()
        self.path = self.run_dir / MANIFEST_NAME
        self.artifacts: dict[str, dict] = {}
        #: name -> what was reused (True, or a detail such as blocks reused), for run.json
        self.reused: dict[str, Any] = {}
        if not fresh and self.path.is_file():
            try:
                loaded = json.loads(self.path.read_text())
            except (OSError, ValueError) as err:
                logger.warning("%s is unreadable (%s); recomputing every artifact", self.path, err)
                loaded = {}
            if loaded.get("format") == FORMAT:
                self.artifacts = dict(loaded.get("artifacts", {}))

    def save(self) -> None:
        """Rewrite ``manifest.json`` atomically."""
        write_json(self.path,  # one line: rewritten after every coadd block
                   {"format": FORMAT, "skymosaic": __version__, "artifacts": self.artifacts},
                   indent=None)

    def lookup(self, name: str, fp: str) -> dict | None:
        """The entry ``name`` if its fingerprint is ``fp`` and its file verifies, else None.

        A mismatch or a file that fails verification (missing, truncated, altered) is
        logged and the entry dropped, so the artifact is recomputed.
        """
        entry = self.artifacts.get(name)
        if entry is None:
            return None
        if entry.get("fingerprint") != fp:
            logger.info("resume: %s changed (inputs or settings); recomputing it", name)
            self.artifacts.pop(name)
            return None
        if not self._verifies(entry):
            logger.warning("resume: %s (%s) is missing or damaged; recomputing it", name,
                           self.run_dir / entry.get("path", ""))
            self.artifacts.pop(name)
            return None
        return entry

    def _verifies(self, entry: dict) -> bool:
        rel = entry.get("path")
        if rel is None:
            return True
        target = self.run_dir / rel
        if "size" not in entry:
            return target.exists()
        if not target.is_file() or target.stat().st_size != entry["size"]:
            return False
        return "sha256" not in entry or content_hash(target) == entry["sha256"]

    def record(self, name: str, fp: str, *, path: str | os.PathLike | None = None,
               meta: dict | None = None, checksum: bool = False) -> dict:
        """Add or replace the entry ``name`` and save the manifest.

        ``path`` (a file or folder inside the run directory, as a usable path) is stored
        relative to the run directory and verified on later lookups: a file by its size,
        and by its SHA-256 when ``checksum`` (for small files); a folder by its existence.
        """
        entry: dict[str, Any] = {"fingerprint": fp, "meta": dict(meta or {})}
        if path is not None:
            target = Path(path).resolve()
            entry["path"] = os.path.relpath(target, self.run_dir)
            if target.is_file():
                entry["size"] = target.stat().st_size
                if checksum:
                    entry["sha256"] = content_hash(target)
        self.artifacts[name] = entry
        self.save()
        return entry

    def forget(self, names: Iterable[str]) -> None:
        """Drop entries (their artifacts are gone or stale) and save."""
        for name in names:
            self.artifacts.pop(name, None)
        self.save()

    def load_pickle(self, name: str, fp: str) -> Any | None:
        """The object stored by `store_pickle` under ``name`` if still valid, else None."""
        entry = self.lookup(name, fp)
        if entry is None:
            return None
        try:
            with open(self.run_dir / entry["path"], "rb") as fh:
                obj = pickle.load(fh)  # our own file, verified by its SHA-256 above
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as err:
            logger.warning("resume: %s could not be loaded (%s); recomputing it", name, err)
            self.artifacts.pop(name, None)
            return None
        self.reused[name] = True
        return obj

    def store_pickle(self, name: str, fp: str, obj: Any) -> None:
        """Persist ``obj`` as ``state/<name>.pkl`` (atomically) and record it."""
        path = self.run_dir / "state" / f"{name}.pkl"
        with atomic_path(path, suffix=".pkl") as tmp, open(tmp, "wb") as fh:
            pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.record(name, fp, path=path, checksum=True)

"""The catalog the first phases build and the later ones read: usable frames, rejections."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from skymosaic._stats import FrameStats
from skymosaic.io import FrameInfo
from skymosaic.stack.quality import FrameQuality

__all__ = ["Catalog"]

logger = logging.getLogger(__name__)


@dataclass
class Catalog:
    """Frames found, split into usable ones and rejected ones (with reasons)."""

    frames: list[FrameInfo] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    stats: dict[str, FrameStats] = field(default_factory=dict)
    quality: dict[str, FrameQuality] = field(default_factory=dict)
    solve: dict = field(default_factory=dict)  # plate-solving report (run.json "solve")
    sessions: list[dict] = field(default_factory=list)  # quality sessions (run.json "sessions")

    def reject(self, path: Path | str, reason: str) -> None:
        logger.warning("%s: %s; frame rejected", Path(path).name, reason)
        self.rejected[str(path)] = reason

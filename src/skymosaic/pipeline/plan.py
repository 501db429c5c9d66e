"""Phase 3, plan (classic mode): group the frames by sky position into the master tiles'
groups (`skymosaic.stack.classic.group_frames`).

Reused from ``state/clustering.pkl`` when the verified catalog and the ``[cluster]``
settings are unchanged. Grid mode's plan is the stack plan itself (`discover`).
"""

from __future__ import annotations

import logging
import sys

from skymosaic.plan import Clustering
from skymosaic.stack.classic import group_frames

from ._catalog import Catalog
from ._run import Run, Sections, run_phase

__all__ = ["clustering", "run"]

logger = logging.getLogger(__name__)

NAME = "clustering"
SECTIONS = Sections(("cluster",))
STORE = "pickle"
TIMING = "cluster"


def key(ctx: Run, catalog: Catalog, covered: dict) -> list:
    return [ctx.catalog_fp, covered]


def run(ctx: Run, catalog: Catalog) -> Clustering:
    """The classic grouping of the catalog's frames."""
    return group_frames(catalog.frames, ctx.config)


def clustering(ctx: Run, catalog: Catalog) -> Clustering:
    """The grouping of this run, computed (or reused) once: the pre-flight check needs it
    before the stack phase."""
    if ctx.clustering is None:
        ctx.clustering = run_phase(ctx, sys.modules[__name__], catalog).value
    return ctx.clustering

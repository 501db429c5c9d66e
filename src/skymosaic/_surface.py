"""A smooth sky surface in an input's own pixel frame: the additive part of its correction.

Light-pollution and moonlight gradients are fixed to the sensor and the sky, not to the
output grid, so each input's sky model lives in its own pixels. ``S(x, y) = sum_m c_m
phi_m(u, v)`` with the normalised coordinates ``u = 2 x / (W - 1) - 1`` and
``v = 2 y / (H - 1) - 1`` (0-based pixels of the ``H x W`` input, so the frame spans
[-1, 1] on both axes and a coefficient is an amplitude in data units at the frame's edge)
and the basis `surface_terms` of the chosen order: ``1``; ``1, u, v``; ``1, u, v, u^2,
u v, v^2``. The photometry engine solves the coefficients
(`skymosaic.photometry.solve_sky_surfaces`); the coadd evaluates the surface at every
output pixel's input coordinates (`SkySurface.evaluate`), array-API style, so the same
maths runs on any backend.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["SURFACE_NAMES", "SURFACE_ORDERS", "SkySurface", "n_terms", "surface_terms"]

#: Surface order by name (the ``photometry.sky_surface`` choices) and its number of terms.
SURFACE_ORDERS = {"constant": 0, "plane": 1, "quadratic": 2}
#: The surface names in order of increasing order (the ``stack.sky_surface`` choices).
SURFACE_NAMES = tuple(SURFACE_ORDERS)
_N_TERMS = {0: 1, 1: 3, 2: 6}


def n_terms(order: int) -> int:
    """Number of basis terms of a surface of ``order`` (0, 1 or 2)."""
    try:
        return _N_TERMS[int(order)]
    except KeyError:
        raise ValueError(f"surface order must be 0, 1 or 2, got {order!r}") from None


def surface_terms(u: Any, v: Any, order: int) -> list[Any]:
    """The basis functions at normalised coordinates ``(u, v)`` (any array namespace)."""
    m = n_terms(order)
    terms = [u * 0 + 1, u, v, u * u, u * v, v * v]
    return terms[:m]


@dataclass(frozen=True)
class SkySurface:
    """Per-channel polynomial sky surfaces of one input, ``coeffs`` shaped (C, M).

    ``shape`` is the input's ``(H, W)``; ``origin`` ``(x0, y0)`` is added to the
    coordinates given to `evaluate` (the corner of a region read from the input).
    """

    coeffs: np.ndarray
    shape: tuple[int, int]
    origin: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        c = np.asarray(self.coeffs, dtype=np.float64)
        if c.ndim != 2 or c.shape[1] not in _N_TERMS.values():
            raise ValueError(f"surface coefficients must be (C, 1|3|6), got {c.shape}")
        object.__setattr__(self, "coeffs", c)

    @property
    def order(self) -> int:
        return {1: 0, 3: 1, 6: 2}[self.coeffs.shape[1]]

    def at(self, x0: float, y0: float) -> SkySurface:
        """The same surface for coordinates relative to input pixel ``(x0, y0)``."""
        ox, oy = self.origin
        return dataclasses.replace(self, origin=(ox + x0, oy + y0))

    def normalised(self, x: Any, y: Any) -> tuple[Any, Any]:
        """``(u, v)`` of input pixel coordinates ``(x, y)`` (relative to ``origin``)."""
        h, w = self.shape
        ox, oy = self.origin
        return (x + ox) * (2.0 / max(w - 1, 1)) - 1.0, (y + oy) * (2.0 / max(h - 1, 1)) - 1.0

    def evaluate(self, x: Any, y: Any, *, dtype: Any = None) -> Any:
        """The surfaces at input coordinates ``x, y`` (arrays (h, w)): an array (C, h, w) in
        their namespace; NaN coordinates give NaN."""
        from array_api_compat import array_namespace  # noqa: PLC0415 (light import)

        xp = array_namespace(x, y)
        u, v = self.normalised(x, y)
        terms = surface_terms(u, v, self.order)
        planes = []
        for ch in range(self.coeffs.shape[0]):
            acc = terms[0] * float(self.coeffs[ch, 0])
            for m in range(1, len(terms)):
                acc = acc + terms[m] * float(self.coeffs[ch, m])
            planes.append(acc if dtype is None else xp.astype(acc, dtype))
        return xp.stack(planes, axis=0)

    def to_list(self) -> list[list[float]]:
        """The coefficients as nested lists (run.json, the manifest)."""
        return self.coeffs.tolist()

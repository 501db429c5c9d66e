"""An analytic synthetic sky (stars, galaxies, nebulosity) that renders onto any celestial WCS.

The sky is defined on the gnomonic (TAN) tangent plane of the truth's centre, in arcsec:
``xi`` points east, ``eta`` north. Every component is a function of ``(xi, eta)``, so the
same sky rendered onto a frame WCS and onto a mosaic WCS is exact on both grids (no
resampling step separates them).

Units: pixel values are flux per pixel (ADU). A star's pixels sum to its flux. Surface
brightness (galaxies, nebula) is expressed in ADU per *truth pixel*, i.e. per
``pixel_scale_arcsec**2`` arcsec^2, and is scaled by each rendered pixel's own area
(computed from its WCS), so a wider pixel collects proportionally more light.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from astropy.wcs import WCS
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline
from scipy.special import gamma as gamma_fn

__all__ = ["TruthSky", "celestial_wcs", "make_truth_sky"]

logger = logging.getLogger(__name__)

_ARCSEC_PER_RAD = 180.0 / math.pi * 3600.0
_STAR_DENSITY_PER_DEG2 = 3000.0
_GALAXY_DENSITY_PER_DEG2 = 8.0
_BOX_FWHM = 5.0  # star stamps reach 5 FWHM: the Moffat(beta=3) wing there is 5e-5 of peak
_STAR_CHUNK_ELEMENTS = 8_000_000  # sub-samples evaluated at once (~32 MB of float32)
_COARSE_STEP_PX = 16  # pixel-to-sky maps are splined from nodes this far apart
_PROJECTIONS = ("TAN", "SIN", "ARC", "STG", "ZEA")


def _tan_project(ra, dec, ra0: float, dec0: float):
    """Gnomonic projection of (ra, dec) [deg] about (ra0, dec0); returns (xi, eta) [arcsec]."""
    a = np.radians(np.asarray(ra, dtype=np.float64) - ra0)
    d = np.radians(np.asarray(dec, dtype=np.float64))
    d0 = math.radians(dec0)
    cos_c = math.sin(d0) * np.sin(d) + math.cos(d0) * np.cos(d) * np.cos(a)
    xi = np.cos(d) * np.sin(a) / cos_c
    eta = (math.cos(d0) * np.sin(d) - math.sin(d0) * np.cos(d) * np.cos(a)) / cos_c
    return xi * _ARCSEC_PER_RAD, eta * _ARCSEC_PER_RAD


def _tan_deproject(xi, eta, ra0: float, dec0: float):
    """Inverse of `_tan_project`: (xi, eta) [arcsec] -> (ra, dec) [deg]."""
    x = np.asarray(xi, dtype=np.float64) / _ARCSEC_PER_RAD
    y = np.asarray(eta, dtype=np.float64) / _ARCSEC_PER_RAD
    d0 = math.radians(dec0)
    rho = np.hypot(x, y)
    c = np.arctan(rho)
    with np.errstate(invalid="ignore", divide="ignore"):
        dec = np.arcsin(np.cos(c) * math.sin(d0) + np.where(rho > 0, y * np.sin(c) / rho, 0.0)
                        * math.cos(d0))
    ra = ra0 + np.degrees(
        np.arctan2(x * np.sin(c), rho * math.cos(d0) * np.cos(c) - y * math.sin(d0) * np.sin(c))
    )
    return np.mod(ra, 360.0), np.degrees(dec)


def celestial_wcs(
    shape: tuple[int, int],
    *,
    center: tuple[float, float],
    pixel_scale_arcsec: float,
    rotation_deg: float = 0.0,
    projection: str = "TAN",
) -> WCS:
    """Build a simple celestial WCS (north up, east left when ``rotation_deg`` is 0).

    Parameters
    ----------
    shape : (int, int)
        Image shape ``(H, W)``; the reference pixel is the image centre.
    center : (float, float)
        ``(ra, dec)`` of the image centre in degrees.
    pixel_scale_arcsec : float
        Pixel scale in arcsec per pixel (> 0).
    rotation_deg : float
        Position angle of the image y axis, east of north, in degrees.
    projection : str
        Three-letter FITS projection code: TAN, SIN, ARC, STG or ZEA.

    Returns
    -------
    astropy.wcs.WCS
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (H, W) with positive sizes, got {shape!r}")
    if not pixel_scale_arcsec > 0:
        raise ValueError(f"pixel_scale_arcsec must be > 0, got {pixel_scale_arcsec!r}")
    if projection not in _PROJECTIONS:
        raise ValueError(f"projection must be one of {_PROJECTIONS}, got {projection!r}")
    s = pixel_scale_arcsec / 3600.0
    rho = math.radians(rotation_deg)
    w = WCS(naxis=2)
    w.wcs.ctype = [f"RA---{projection}", f"DEC--{projection}"]
    w.wcs.crval = [float(center[0]) % 360.0, float(center[1])]
    w.wcs.crpix = [(shape[1] + 1) / 2.0, (shape[0] + 1) / 2.0]
    w.wcs.cd = [[-s * math.cos(rho), -s * math.sin(rho)], [-s * math.sin(rho), s * math.cos(rho)]]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


@dataclass(frozen=True, eq=False)
class _SkyMaps:
    """Per-pixel tangent-plane coordinates of an image and splines for the star Jacobians."""

    xi: np.ndarray
    eta: np.ndarray
    area: np.ndarray  # arcsec^2 per pixel
    spl_xi: RectBivariateSpline
    spl_eta: RectBivariateSpline

    @property
    def xi_range(self) -> tuple[float, float]:
        return float(self.xi.min()), float(self.xi.max())

    @property
    def eta_range(self) -> tuple[float, float]:
        return float(self.eta.min()), float(self.eta.max())


@dataclass(frozen=True, eq=False)
class TruthSky:
    """A synthetic sky with a known, analytic truth; build it with `make_truth_sky`.

    Attributes
    ----------
    center : (float, float)
        ``(ra, dec)`` in degrees; tangent point of the sky's coordinate plane.
    size_deg : (float, float)
        ``(width, height)`` of the populated region in degrees.
    pixel_scale_arcsec : float
        Reference pixel scale: surface brightness is in ADU per pixel of this size.
    fwhm_arcsec, moffat_beta : float
        Moffat PSF of every star.
    channels : int
        1 (mono) or 3 (R, G, B).
    star_ra, star_dec : ndarray (N,)
        Star positions in degrees.
    star_flux : ndarray (N, C)
        Total flux of each star per channel (ADU).
    galaxies : ndarray (M, 7)
        Columns ``xi, eta`` [arcsec], ``r_eff`` [arcsec], ``axis_ratio``, ``pa_deg``
        (east of north), ``sersic_n``, ``ie`` [ADU/arcsec^2 per unit colour].
    galaxy_colour : ndarray (M, C)
        Per-channel multiplier of each galaxy's surface brightness.
    nebula_coeffs : ndarray (K, gy, gx)
        Cubic B-spline coefficients of K nebula components on a grid in the tangent plane.
    nebula_colour : ndarray (K, C)
        Per-channel multiplier of each nebula component.
    nebula_grid : (float, float, float)
        ``(xi0, eta0, step)`` of the nebula node grid, in arcsec.
    seed : int
        Seed the sky was drawn with.
    """

    center: tuple[float, float]
    size_deg: tuple[float, float]
    pixel_scale_arcsec: float
    fwhm_arcsec: float
    moffat_beta: float
    channels: int
    star_ra: np.ndarray
    star_dec: np.ndarray
    star_flux: np.ndarray
    galaxies: np.ndarray
    galaxy_colour: np.ndarray
    nebula_coeffs: np.ndarray
    nebula_colour: np.ndarray
    nebula_grid: tuple[float, float, float]
    seed: int = 0

    @property
    def n_stars(self) -> int:
        return int(self.star_ra.size)

    @property
    def star_xi_eta(self) -> tuple[np.ndarray, np.ndarray]:
        """Star positions in the sky's tangent plane (arcsec)."""
        return _tan_project(self.star_ra, self.star_dec, *self.center)

    def wcs_for(
        self,
        shape: tuple[int, int],
        *,
        center: tuple[float, float] | None = None,
        rotation_deg: float = 0.0,
        pixel_scale_arcsec: float | None = None,
        projection: str = "TAN",
    ) -> WCS:
        """A simple celestial WCS on this sky; defaults to the sky's centre and pixel scale.

        See `celestial_wcs` for the parameters.
        """
        return celestial_wcs(
            shape,
            center=self.center if center is None else center,
            pixel_scale_arcsec=(
                self.pixel_scale_arcsec if pixel_scale_arcsec is None else pixel_scale_arcsec
            ),
            rotation_deg=rotation_deg,
            projection=projection,
        )

    def render(
        self,
        wcs: WCS,
        shape: tuple[int, int],
        *,
        channels: int | None = None,
        stars: bool = True,
        galaxies: bool = True,
        nebula: bool = True,
    ) -> np.ndarray:
        """Render the sky onto an image grid.

        Parameters
        ----------
        wcs : astropy.wcs.WCS
            Any celestial WCS (TAN, SIN, ..., with or without SIP, rotated, flipped).
        shape : (int, int)
            Output ``(H, W)``.
        channels : int, optional
            1 or 3. ``None`` uses the sky's own channels. Asking 1 of a colour sky gives the
            mean of its channels; asking 3 of a mono sky repeats it.
        stars, galaxies, nebula : bool
            Which components to include.

        Returns
        -------
        ndarray, float32, shape (C, H, W)
            Flux per pixel. Pixel centres are at integer 0-based coordinates.

        Raises
        ------
        ValueError
            If the WCS is not celestial, or the shape or channels are invalid.
        """
        if not isinstance(wcs, WCS) or not wcs.has_celestial:
            raise ValueError(f"wcs must be a celestial astropy WCS, got {wcs!r}")
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape must be (H, W) with positive sizes, got {shape!r}")
        n_out = self.channels if channels is None else channels
        if n_out not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels!r}")
        h, w = int(shape[0]), int(shape[1])
        cwcs = wcs.celestial
        maps = self._sky_maps(cwcs, h, w)
        img = np.zeros((self.channels, h, w), dtype=np.float32)
        area_rel = maps.area / np.float32(self.pixel_scale_arcsec**2)
        if nebula and self.nebula_coeffs.shape[0]:
            self._add_nebula(img, maps, area_rel)
        if galaxies and self.galaxies.shape[0]:
            self._add_galaxies(img, maps, cwcs)
        if stars and self.n_stars:
            self._add_stars(img, maps, cwcs)
        if n_out == self.channels:
            return img
        if n_out == 1:
            return img.mean(axis=0, keepdims=True)
        return np.repeat(img, 3, axis=0)

    # -- rendering helpers -------------------------------------------------------------

    def _sky_maps(self, cwcs: WCS, h: int, w: int) -> _SkyMaps:
        """Tangent-plane coordinates and pixel areas, splined from a coarse node grid."""
        ys = _nodes(h)
        xs = _nodes(w)
        gx, gy = np.meshgrid(xs, ys)
        ra, dec = cwcs.pixel_to_world_values(gx, gy)
        xi_c, eta_c = _tan_project(ra, dec, *self.center)
        if not (np.all(np.isfinite(xi_c)) and np.all(np.isfinite(eta_c))):
            raise ValueError("the WCS maps some pixels outside the sky (non-finite coordinates)")
        ky, kx = min(3, ys.size - 1), min(3, xs.size - 1)
        spl_xi = RectBivariateSpline(ys, xs, xi_c, kx=ky, ky=kx)
        spl_eta = RectBivariateSpline(ys, xs, eta_c, kx=ky, ky=kx)
        yy, xx = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
        jac = [s.ev(gy, gx, dx=a, dy=b) for s in (spl_xi, spl_eta) for a, b in ((0, 1), (1, 0))]
        area_c = np.abs(jac[0] * jac[3] - jac[1] * jac[2])
        area = RectBivariateSpline(ys, xs, area_c, kx=ky, ky=kx)(yy, xx)
        return _SkyMaps(
            xi=spl_xi(yy, xx), eta=spl_eta(yy, xx), area=area.astype(np.float32),
            spl_xi=spl_xi, spl_eta=spl_eta,
        )

    def _add_nebula(self, img: np.ndarray, maps: _SkyMaps, area_rel: np.ndarray) -> None:
        xi0, eta0, step = self.nebula_grid
        coords = np.stack([(maps.eta - eta0) / step, (maps.xi - xi0) / step])
        for k in range(self.nebula_coeffs.shape[0]):
            val = ndimage.map_coordinates(
                self.nebula_coeffs[k], coords, order=3, prefilter=False, mode="nearest"
            ).astype(np.float32)
            np.maximum(val, 0.0, out=val)
            val *= area_rel
            for c in range(self.channels):
                img[c] += np.float32(self.nebula_colour[k, c]) * val

    def _add_galaxies(self, img: np.ndarray, maps: _SkyMaps, cwcs: WCS) -> None:
        h, w = maps.xi.shape
        soft2 = (0.5 * self.fwhm_arcsec) ** 2
        gal = self.galaxies
        idx = np.flatnonzero(_near(gal[:, 0], gal[:, 1], maps, 8.0 * gal[:, 2] + 10.0))
        if idx.size == 0:
            return
        ra, dec = _tan_deproject(gal[idx, 0], gal[idx, 1], *self.center)
        px, py = cwcs.world_to_pixel_values(ra, dec)
        scale = math.sqrt(float(np.median(maps.area)))
        for j, g in enumerate(idx):
            xi0, eta0, r_e, q, pa, n, ie = gal[g]
            r_px = 8.0 * r_e / scale + 2.0
            y0, y1 = max(int(py[j] - r_px), 0), min(int(py[j] + r_px) + 2, h)
            x0, x1 = max(int(px[j] - r_px), 0), min(int(px[j] + r_px) + 2, w)
            if y1 <= y0 or x1 <= x0:
                continue
            dxi = maps.xi[y0:y1, x0:x1] - xi0
            deta = maps.eta[y0:y1, x0:x1] - eta0
            t = math.radians(pa)
            u = deta * math.cos(t) + dxi * math.sin(t)  # along the major axis
            v = -deta * math.sin(t) + dxi * math.cos(t)
            r = np.sqrt(u * u + (v / q) ** 2 + soft2)
            b = _sersic_b(n)
            sb = ie * np.exp(-b * ((r / r_e) ** (1.0 / n) - 1.0))
            sb[r > 8.0 * r_e] = 0.0
            val = (sb * maps.area[y0:y1, x0:x1]).astype(np.float32)
            for c in range(self.channels):
                img[c, y0:y1, x0:x1] += np.float32(self.galaxy_colour[g, c]) * val

    def _add_stars(self, img: np.ndarray, maps: _SkyMaps, cwcs: WCS) -> None:
        h, w = maps.xi.shape
        sxi, seta = self.star_xi_eta
        idx = np.flatnonzero(_near(sxi, seta, maps, _BOX_FWHM * self.fwhm_arcsec + 10.0))
        if idx.size == 0:
            return
        x, y = cwcs.world_to_pixel_values(self.star_ra[idx], self.star_dec[idx])
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        yc, xc = np.clip(y, 0, h - 1), np.clip(x, 0, w - 1)
        jac = np.stack(
            [s.ev(yc, xc, dx=a, dy=b) for s in (maps.spl_xi, maps.spl_eta)
             for a, b in ((0, 1), (1, 0))], axis=-1,
        )  # (N, 4): dxi/dx, dxi/dy, deta/dx, deta/dy in arcsec per pixel
        min_scale = float(np.sqrt(np.min(maps.area)))
        radius = max(2, math.ceil(_BOX_FWHM * self.fwhm_arcsec / min_scale))
        keep = (x > -radius) & (x < w - 1 + radius) & (y > -radius) & (y < h - 1 + radius)
        fwhm_px = self.fwhm_arcsec / min_scale
        oversample = 5 if fwhm_px < 2.0 else (3 if fwhm_px < 4.0 else 1)  # well sampled: 1
        box = 2 * radius + 1
        chunk = max(1, _STAR_CHUNK_ELEMENTS // (box * oversample) ** 2)
        sel = np.flatnonzero(keep)
        for start in range(0, sel.size, chunk):
            s = sel[start:start + chunk]
            _splat_stars(
                img, x[s], y[s], jac[s], self.star_flux[idx[s]],
                radius=radius, oversample=oversample, alpha=self._moffat_alpha,
                beta=self.moffat_beta,
            )

    @property
    def _moffat_alpha(self) -> float:
        return self.fwhm_arcsec / (2.0 * math.sqrt(2.0 ** (1.0 / self.moffat_beta) - 1.0))


def _near(xi: np.ndarray, eta: np.ndarray, maps: _SkyMaps, margin) -> np.ndarray:
    """Cheap cull: points within ``margin`` arcsec of the image's tangent-plane bounding box."""
    return (
        (xi > maps.xi_range[0] - margin) & (xi < maps.xi_range[1] + margin)
        & (eta > maps.eta_range[0] - margin) & (eta < maps.eta_range[1] + margin)
    )


def _nodes(n: int) -> np.ndarray:
    """Coarse node positions covering pixel centres 0..n-1 (at least 4 nodes when n >= 4)."""
    count = max(min(n, 4), math.ceil((n - 1) / _COARSE_STEP_PX) + 1)
    return np.linspace(0.0, n - 1.0, count) if n > 1 else np.array([-0.5, 0.0, 0.5])


def _sersic_b(n: float) -> float:
    return 2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n)


def _splat_stars(
    img: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    jac: np.ndarray,
    flux: np.ndarray,
    *,
    radius: int,
    oversample: int,
    alpha: float,
    beta: float,
) -> None:
    """Add Moffat stars to ``img`` (C, H, W), vectorised over stars.

    Each star's stamp (2*radius+1 pixels square) is sampled at ``oversample**2`` points per
    pixel, binned, and normalised to sum to 1, so a star fully inside the image contributes
    exactly its flux. The Moffat is circular on the sky; ``jac`` maps pixel offsets to sky
    offsets, which handles rotation, flips, anisotropic pixels and distortion locally.
    """
    c_, h, w = img.shape
    n = x.size
    box = 2 * radius + 1
    sub = (np.arange(oversample, dtype=np.float64) + 0.5) / oversample - 0.5
    steps = (np.arange(box)[:, None] + sub[None, :]).ravel()  # (box*os,)
    ix0 = np.rint(x).astype(np.int64) - radius
    iy0 = np.rint(y).astype(np.int64) - radius
    dx = (ix0 - x)[:, None] + steps[None, :]
    dy = (iy0 - y)[:, None] + steps[None, :]
    a = (jac[:, 0] ** 2 + jac[:, 2] ** 2) / alpha**2
    b = (jac[:, 0] * jac[:, 1] + jac[:, 2] * jac[:, 3]) / alpha**2
    c = (jac[:, 1] ** 2 + jac[:, 3] ** 2) / alpha**2
    dx32, dy32 = dx.astype(np.float32), dy.astype(np.float32)
    u = (2.0 * b)[:, None, None].astype(np.float32) * dy32[:, :, None] * dx32[:, None, :]
    u += a[:, None, None].astype(np.float32) * dx32[:, None, :] ** 2
    u += c[:, None, None].astype(np.float32) * dy32[:, :, None] ** 2
    u += np.float32(1.0)
    prof = 1.0 / (u * u * u) if beta == 3.0 else u ** np.float32(-beta)
    binned = prof.reshape(n, box, oversample, box, oversample).sum(axis=(2, 4))
    binned /= binned.sum(axis=(1, 2), keepdims=True)
    rows = iy0[:, None] + np.arange(box)[None, :]
    cols = ix0[:, None] + np.arange(box)[None, :]
    ok = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    flat = (rows[:, :, None] * w + cols[:, None, :])[ok]
    for ch in range(c_):
        weights = (binned * flux[:, ch, None, None].astype(np.float32))[ok]
        img[ch] += np.bincount(flat, weights=weights, minlength=h * w).reshape(h, w).astype(
            np.float32
        )


def make_truth_sky(
    *,
    center: tuple[float, float] = (150.0, 2.0),
    size_deg: tuple[float, float] = (1.0, 1.0),
    pixel_scale_arcsec: float = 2.0,
    n_stars: int | None = None,
    n_galaxies: int | None = None,
    nebula_amplitude: float = 20.0,
    nebula_scale_arcsec: float = 600.0,
    channels: int = 1,
    fwhm_arcsec: float = 5.0,
    moffat_beta: float = 3.0,
    flux_range: tuple[float, float] = (10**1.5, 10**5.5),
    flux_slope: float = 0.8,
    seed: int = 0,
) -> TruthSky:
    """Draw a random synthetic sky.

    Parameters
    ----------
    center : (float, float)
        ``(ra, dec)`` of the sky centre in degrees.
    size_deg : (float, float)
        ``(width, height)`` of the populated region, in degrees of the tangent plane.
    pixel_scale_arcsec : float
        Reference pixel scale; surface brightness is in ADU per pixel of this size.
    n_stars : int, optional
        Number of stars; default 3000 per square degree.
    n_galaxies : int, optional
        Number of galaxies; default 8 per square degree (rounded).
    nebula_amplitude : float
        Peak surface brightness of the nebulosity (ADU per reference pixel); 0 disables it.
    nebula_scale_arcsec : float
        Correlation length of the nebulosity.
    channels : int
        1 (mono) or 3 (colour: per-star colours, galaxy colours, red + teal nebula).
    fwhm_arcsec, moffat_beta : float
        Moffat PSF.
    flux_range : (float, float)
        Star total flux range in ADU (summed over channels' mean).
    flux_slope : float
        Cumulative counts follow ``N(>F) ∝ F**-flux_slope`` (0.8: many faint, some bright).
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    TruthSky

    Raises
    ------
    ValueError
        On a non-positive size, scale or FWHM, a bad channel count or flux range.

    Examples
    --------
    >>> sky = make_truth_sky(size_deg=(0.1, 0.1), seed=1)
    >>> img = sky.render(sky.wcs_for((64, 64)), (64, 64))
    >>> img.shape
    (1, 64, 64)
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(size_deg) != 2 or min(size_deg) <= 0:
        raise ValueError(f"size_deg must be two positive numbers, got {size_deg!r}")
    for name, val in (("pixel_scale_arcsec", pixel_scale_arcsec), ("fwhm_arcsec", fwhm_arcsec),
                      ("nebula_scale_arcsec", nebula_scale_arcsec)):
        if not val > 0:
            raise ValueError(f"{name} must be > 0, got {val!r}")
    if not moffat_beta > 1:
        raise ValueError(f"moffat_beta must be > 1, got {moffat_beta!r}")
    if not 0 < flux_range[0] < flux_range[1]:
        raise ValueError(f"flux_range must be (low, high) with 0 < low < high, got {flux_range!r}")
    if nebula_amplitude < 0:
        raise ValueError(f"nebula_amplitude must be >= 0, got {nebula_amplitude!r}")
    for name, count in (("n_stars", n_stars), ("n_galaxies", n_galaxies)):
        if count is not None and count < 0:
            raise ValueError(f"{name} must be >= 0, got {count!r}")
    rng = np.random.default_rng(seed)
    area = size_deg[0] * size_deg[1]
    n_stars = round(_STAR_DENSITY_PER_DEG2 * area) if n_stars is None else int(n_stars)
    n_gal = round(_GALAXY_DENSITY_PER_DEG2 * area) if n_galaxies is None else int(n_galaxies)
    half_w, half_h = size_deg[0] * 1800.0, size_deg[1] * 1800.0
    ra0, dec0 = float(center[0]) % 360.0, float(center[1])

    sxi = rng.uniform(-half_w, half_w, n_stars)
    seta = rng.uniform(-half_h, half_h, n_stars)
    star_ra, star_dec = _tan_deproject(sxi, seta, ra0, dec0)
    flux = _power_law(rng, n_stars, flux_range, flux_slope)
    star_flux = flux[:, None] * _colours(rng, n_stars, channels, spread=0.3)

    galaxies = np.zeros((n_gal, 7))
    if n_gal:
        r_e = rng.uniform(8.0, 40.0, n_gal)
        q = rng.uniform(0.35, 1.0, n_gal)
        n_s = rng.uniform(0.8, 2.0, n_gal)
        g_flux = 10 ** rng.uniform(3.5, 5.0, n_gal)
        b = np.array([_sersic_b(v) for v in n_s])
        norm = 2 * np.pi * q * n_s * r_e**2 * np.exp(b) * b ** (-2 * n_s) * gamma_fn(2 * n_s)
        galaxies = np.column_stack([
            rng.uniform(-half_w, half_w, n_gal) * 0.9, rng.uniform(-half_h, half_h, n_gal) * 0.9,
            r_e, q, rng.uniform(0.0, 180.0, n_gal), n_s, g_flux / norm,
        ])
    galaxy_colour = _colours(rng, n_gal, channels, spread=0.25)

    coeffs, grid = _nebula_field(rng, half_w, half_h, nebula_scale_arcsec, nebula_amplitude)
    neb_colour = np.array([[1.0], [0.5]])  # mono: two components, the second fainter
    if channels == 3:
        neb_colour = np.array([[1.0, 0.35, 0.3], [0.2, 0.45, 0.5]])  # H-alpha red, OIII teal
    if nebula_amplitude == 0:
        coeffs, neb_colour = coeffs[:0], neb_colour[:0]
    for arr in (star_ra, star_dec, star_flux, galaxies, galaxy_colour, coeffs, neb_colour):
        arr.flags.writeable = False
    logger.debug("truth sky: %d stars, %d galaxies, seed %d", n_stars, n_gal, seed)
    return TruthSky(
        center=(ra0, dec0), size_deg=(float(size_deg[0]), float(size_deg[1])),
        pixel_scale_arcsec=float(pixel_scale_arcsec), fwhm_arcsec=float(fwhm_arcsec),
        moffat_beta=float(moffat_beta), channels=channels, star_ra=star_ra, star_dec=star_dec,
        star_flux=star_flux, galaxies=galaxies, galaxy_colour=galaxy_colour,
        nebula_coeffs=coeffs, nebula_colour=neb_colour, nebula_grid=grid, seed=seed,
    )


def _power_law(rng: np.random.Generator, n: int, rng_flux: tuple[float, float], slope: float):
    """Fluxes with ``N(>F) ∝ F**-slope`` between the two limits (inverse-CDF sampling)."""
    lo, hi = rng_flux[0] ** -slope, rng_flux[1] ** -slope
    return (lo + rng.uniform(0.0, 1.0, n) * (hi - lo)) ** (-1.0 / slope)


def _colours(rng: np.random.Generator, n: int, channels: int, *, spread: float) -> np.ndarray:
    """(n, C) colour multipliers averaging 1 over channels; a blue-red temperature axis."""
    if channels == 1:
        return np.ones((n, 1))
    t = rng.uniform(-1.0, 1.0, n)
    col = np.column_stack([1.0 + spread * t, np.ones(n), 1.0 - spread * t])
    return col / col.mean(axis=1, keepdims=True)


def _nebula_field(
    rng: np.random.Generator, half_w: float, half_h: float, scale: float, amplitude: float
):
    """Two smooth random fields on a node grid, tapered to zero outside the sky region."""
    step = scale / 3.0
    pad = 4
    nx = math.ceil(2 * half_w / step) + 2 * pad + 1
    ny = math.ceil(2 * half_h / step) + 2 * pad + 1
    xi0 = -half_w - pad * step
    eta0 = -half_h - pad * step
    gx = xi0 + step * np.arange(nx)
    gy = eta0 + step * np.arange(ny)
    taper = np.outer(_taper(gy, half_h, pad * step), _taper(gx, half_w, pad * step))
    fields = []
    for _ in range(2):
        f = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 1.5, mode="wrap")
        f = np.clip((f - f.mean()) / f.std(), 0.0, None) ** 1.5 * taper
        f *= amplitude / max(float(f.max()), 1e-12)
        fields.append(ndimage.spline_filter(f, order=3, mode="mirror"))
    return np.stack(fields), (xi0, eta0, step)


def _taper(g: np.ndarray, half: float, width: float) -> np.ndarray:
    """1 inside |g| <= half, a raised-cosine fall to 0 over ``width`` outside."""
    t = np.clip((np.abs(g) - half) / (0.75 * width), 0.0, 1.0)
    return 0.5 * (1.0 + np.cos(np.pi * t))

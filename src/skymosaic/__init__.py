"""skymosaic: seamless, photometrically consistent astronomical mosaics."""

from skymosaic._surface import SURFACE_NAMES, SkySurface
from skymosaic._version import __version__

__all__ = ["SURFACE_NAMES", "SkySurface", "__version__"]

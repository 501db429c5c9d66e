"""skymosaic: seamless, photometrically consistent astronomical mosaics."""

from skymosaic._surface import SkySurface
from skymosaic._version import __version__

__all__ = ["SkySurface", "__version__"]

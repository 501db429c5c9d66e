"""skymosaic: seamless, photometrically consistent astronomical mosaics."""

from skymosaic._version import __version__

__all__ = ["__version__"]

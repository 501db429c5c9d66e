"""Compute backends: NumPy/OpenCV on the host, CuPy (or any array-API namespace) on a device.

See ``docs/gpu.md``. `select_backend` turns ``run.use_gpu`` into a `Backend`; the
primitives that no array API covers have one array-API implementation here
(`skymosaic.backend._kernels`, `skymosaic.backend._stats`) next to the OpenCV/SciPy/NumPy
one in their own module, which dispatches device arrays here.
"""

from skymosaic.backend._device import (
    USE_GPU_CHOICES,
    Backend,
    GPUUnavailableError,
    cpu_backend,
    is_out_of_memory,
    select_backend,
    to_host,
)
from skymosaic.backend._filters import gaussian_filter, nanmedian, nanpercentile, pyr_down, pyr_up

__all__ = [
    "USE_GPU_CHOICES",
    "Backend",
    "GPUUnavailableError",
    "cpu_backend",
    "gaussian_filter",
    "is_out_of_memory",
    "nanmedian",
    "nanpercentile",
    "pyr_down",
    "pyr_up",
    "select_backend",
    "to_host",
]

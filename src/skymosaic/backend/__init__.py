"""Compute backends: NumPy/OpenCV on the host, CuPy (or any array-API namespace) on a device.

See ``docs/gpu.md``. `select_backend` turns ``run.use_gpu`` into a `Backend`; the
primitives that no array API covers have one array-API implementation here
(`skymosaic.backend._kernels`, `skymosaic.backend._stats`), with an OpenCV/SciPy fast path
for NumPy arrays where one was measured faster (`skymosaic.backend._filters` dispatches).
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
from skymosaic.backend._filters import gaussian_filter, pyr_down, pyr_up
from skymosaic.backend._kernels import lanczos3_weights
from skymosaic.backend._stats import (
    median_of_sorted,
    nanmedian,
    nanpercentile,
    sort_nan_last,
    take_rank,
)

__all__ = [
    "USE_GPU_CHOICES",
    "Backend",
    "GPUUnavailableError",
    "cpu_backend",
    "gaussian_filter",
    "is_out_of_memory",
    "lanczos3_weights",
    "median_of_sorted",
    "nanmedian",
    "nanpercentile",
    "pyr_down",
    "pyr_up",
    "select_backend",
    "sort_nan_last",
    "take_rank",
    "to_host",
]

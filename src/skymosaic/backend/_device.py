"""Backend selection, host/device transfers, VRAM-sized chunks and GPU fault handling.

A `Backend` is created once per run by `select_backend` (``use_gpu = auto | on | off``)
and handed to the steps that can run on a device. It owns:

* the array namespace and device (CuPy on a CUDA device, NumPy on the host, or any
  array-API namespace on a non-default device: tests use array-api-strict there as a
  stand-in for CuPy, which makes every hidden host conversion fail);
* the two explicit transfer points, `Backend.to_device` and `Backend.to_host`;
* `Backend.run`, the only place where a GPU step can fail over: an out-of-memory error
  halves the chunk and retries (``max_retries`` times), any other device error -- or
  retries exhausted -- logs one warning naming the step, switches the GPU off for the
  rest of the run and recomputes the step on the CPU;
* a record of where every step ran (`Backend.report`, for ``run.json["backend"]``).

The state that changes during a run (GPU disabled, step counts) lives in the instance,
guarded by its own lock: steps run in thread pools.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
from array_api_compat import array_namespace, is_cupy_namespace, is_numpy_namespace

from skymosaic._errors import ConfigError

__all__ = [
    "USE_GPU_CHOICES",
    "Backend",
    "GPUUnavailableError",
    "cpu_backend",
    "is_out_of_memory",
    "select_backend",
]

logger = logging.getLogger(__name__)

USE_GPU_CHOICES = ("auto", "on", "off")

#: Default share of the free device memory one step may plan for: the rest is headroom
#: for CuPy's memory pool fragmentation, cuFFT/cuBLAS work areas and other processes.
VRAM_FRACTION = 0.5
#: Out-of-memory retries (each halves the chunk) before the step falls back to the CPU.
MAX_OOM_RETRIES = 3

T = TypeVar("T")


class GPUUnavailableError(ConfigError):
    """``use_gpu = "on"`` but CuPy is not importable or no CUDA device answers."""


def _cupy_error_types() -> tuple[type[BaseException], ...]:
    """CuPy's device error classes (empty when CuPy is not installed)."""
    try:
        from cupy.cuda import driver, runtime  # noqa: PLC0415 - optional dependency
    except ImportError:
        return ()
    return tuple(
        t
        for t in (
            getattr(driver, "CUDADriverError", None),
            getattr(runtime, "CUDARuntimeError", None),
        )
        if isinstance(t, type)
    )


def is_out_of_memory(err: BaseException) -> bool:
    """True for a device out-of-memory error.

    ``cupy.cuda.memory.OutOfMemoryError`` is a ``MemoryError``; cuFFT/cuBLAS report
    allocation failures as runtime errors whose text names the out-of-memory status.
    """
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return "out of memory" in text or "out_of_memory" in text


@dataclass
class _StepRecord:
    gpu: int = 0
    cpu: int = 0
    oom_retries: int = 0
    fallback: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"gpu": self.gpu, "cpu": self.cpu}
        if self.oom_retries:
            out["oom_retries"] = self.oom_retries
        if self.fallback:
            out["fallback"] = self.fallback
        return out


class Backend:
    """An array namespace on a device, with transfers, chunk sizing and fault handling.

    Parameters
    ----------
    xp : module
        Array-API namespace (``numpy``, ``cupy``, ``array_api_strict``, ...).
    device : object, optional
        Device the arrays are placed on (``None`` = the namespace's default).
    name : str
        Short name for logs and the report (``"numpy"``, ``"cupy"``, ``"strict"``).
    requested : str
        The ``use_gpu`` setting that selected this backend (for the report).
    vram_fraction : float
        Share of free device memory a step may plan for (see `chunk_rows`).
    max_retries : int
        Out-of-memory retries (each halves the chunk) before falling back to the CPU.
    """

    def __init__(
        self,
        xp: Any,
        *,
        device: Any = None,
        name: str | None = None,
        requested: str = "off",
        vram_fraction: float = VRAM_FRACTION,
        max_retries: int = MAX_OOM_RETRIES,
    ) -> None:
        if not 0 < vram_fraction <= 1:
            raise ValueError(f"vram_fraction must be in (0, 1], got {vram_fraction!r}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
        self.xp = xp
        self.device = device
        self.name = name or getattr(xp, "__name__", "unknown")
        self.requested = requested
        self.vram_fraction = vram_fraction
        self.max_retries = max_retries
        self._on_device = not is_numpy_namespace(xp)
        self._disabled: str | None = None
        self._steps: dict[str, _StepRecord] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = "on" if self.on_device else "off"
        return f"Backend({self.name!r}, device={self.device!r}, gpu {state})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        """Pickled as a recipe (Dask/process workers build their own; state is per process)."""
        device = self.device if not is_cupy_namespace(self.xp) else None
        return _rebuild, (self.xp.__name__, device, self.name, self.requested)

    # ------------------------------------------------------------------ state
    @property
    def on_device(self) -> bool:
        """True while device steps are enabled (False for NumPy or after a fault)."""
        return self._on_device and self._disabled is None

    @property
    def disabled_reason(self) -> str | None:
        """Why the GPU was switched off during the run, or None."""
        return self._disabled

    def report(self) -> dict[str, Any]:
        """Where each step ran, for ``run.json["backend"]``.

        ``{"requested", "backend", "device", "disabled", "steps": {step: {"gpu": n,
        "cpu": n, "oom_retries": n, "fallback": reason}}}``; counts are calls (a step such
        as the coadd runs once per source and block).
        """
        with self._lock:
            steps = {k: v.to_dict() for k, v in sorted(self._steps.items())}
        return {
            "requested": self.requested,
            "backend": self.name,
            "device": None if self.device is None and not self._on_device else str(self.device),
            "disabled": self._disabled,
            "steps": steps,
        }

    def _record(self, step: str) -> _StepRecord:
        with self._lock:
            return self._steps.setdefault(step, _StepRecord())

    def _bump(self, step: str, field: str, n: int = 1) -> None:
        rec = self._record(step)
        with self._lock:
            setattr(rec, field, getattr(rec, field) + n)

    def _disable(self, step: str, reason: str) -> None:
        with self._lock:
            first = self._disabled is None
            if first:
                self._disabled = f"{step}: {reason}"
            rec = self._steps.setdefault(step, _StepRecord())
            rec.fallback = rec.fallback or reason
        if first:  # one warning per run, naming the step
            logger.warning(
                "GPU step %r failed (%s); GPU disabled for the rest of the run, "
                "the step is recomputed on the CPU",
                step,
                reason,
            )

    # -------------------------------------------------------------- transfers
    def to_device(self, arr: Any, dtype: Any = None) -> Any:
        """A host array (or scalar sequence) as an array of this backend's namespace/device.

        Called inside the device function of `run` (a task that started before another
        thread switched the GPU off still finishes on the device).
        """
        if not self._on_device:
            return np.asarray(arr, dtype=dtype)
        xp = self.xp
        if is_cupy_namespace(xp):
            return xp.asarray(arr, dtype=dtype)
        return xp.asarray(arr, dtype=dtype, device=self.device)

    def to_host(self, arr: Any) -> np.ndarray:
        """A device (or host) array as a NumPy array: the one device-to-host transfer."""
        return to_host(arr)

    # ------------------------------------------------------------------ memory
    def free_bytes(self) -> int | None:
        """Free device memory (CUDA free memory + CuPy pool's cached blocks), or None."""
        if not (self.on_device and is_cupy_namespace(self.xp)):
            return None
        cp = self.xp
        free, _total = cp.cuda.runtime.memGetInfo()
        return int(free + cp.get_default_memory_pool().free_bytes())

    def chunk_rows(self, n_rows: int, bytes_per_row: int) -> int:
        """Rows per chunk so that a step's working set fits ``vram_fraction`` of free memory.

        Without memory information (host, or a stand-in namespace) the whole height.
        """
        if n_rows < 1:
            return max(n_rows, 1)
        free = self.free_bytes()
        if free is None or bytes_per_row <= 0:
            return n_rows
        return int(max(1, min(n_rows, (self.vram_fraction * free) // bytes_per_row)))

    # ------------------------------------------------------------------- steps
    def run(
        self,
        step: str,
        gpu: Callable[[int], T],
        cpu: Callable[[], T],
        *,
        rows: int = 1,
    ) -> T:
        """Run ``step`` on the device when enabled, else (or after a fault) on the CPU.

        Parameters
        ----------
        step : str
            Name of the step (in the warning and the report).
        gpu : callable(rows) -> result
            Device computation processing ``rows`` rows per chunk; it is called again from
            scratch with half the rows after an out-of-memory error.
        cpu : callable() -> result
            The same computation with NumPy arrays (the CPU kernels).
        rows : int
            Initial rows per chunk (see `chunk_rows`).

        Returns
        -------
        Whatever ``gpu`` or ``cpu`` returns.
        """
        if not self.on_device:
            self._bump(step, "cpu")
            return cpu()
        errors: tuple[type[BaseException], ...] = (RuntimeError, MemoryError, *_cupy_error_types())
        size = max(1, int(rows))
        for attempt in range(self.max_retries + 1):
            try:
                result = gpu(size)
            except errors as err:
                if is_out_of_memory(err) and attempt < self.max_retries and size > 1:
                    size = max(1, size // 2)
                    self._bump(step, "oom_retries")
                    logger.info("%s: device out of memory, retrying with %d-row chunks", step, size)
                    self._free_pool()
                    continue
                reason = (
                    f"out of memory after {attempt} retries"
                    if is_out_of_memory(err)
                    else f"{type(err).__name__}: {err}"
                )
                self._disable(step, reason)
                break
            else:
                self._bump(step, "gpu")
                return result
        self._bump(step, "cpu")
        return cpu()

    def _free_pool(self) -> None:
        if is_cupy_namespace(self.xp):
            self.xp.get_default_memory_pool().free_all_blocks()


def to_host(arr: Any) -> np.ndarray:
    """Any array (NumPy, CuPy, array-API on any device) as a NumPy array.

    This is the explicit device-to-host boundary; device code never calls ``np.asarray``.
    """
    if isinstance(arr, np.ndarray):
        return arr
    xp = array_namespace(arr)
    if is_cupy_namespace(xp):
        return arr.get()
    if hasattr(xp, "Device") and hasattr(arr, "to_device"):  # array-api-strict
        arr = arr.to_device(xp.Device("CPU_DEVICE"))
    return np.asarray(arr)


def _rebuild(module: str, device: Any, name: str, requested: str) -> Backend:
    """A worker's backend from a pickled recipe (CuPy falls back to NumPy without a GPU)."""
    if name == "cupy":
        be, why = _cupy_backend(requested)
        if be is None:
            logger.warning("worker has no GPU (%s); it runs on the CPU", why)
            return cpu_backend()
        return be
    if name == "numpy":
        return cpu_backend()
    return Backend(importlib.import_module(module), device=device, name=name, requested=requested)


def cpu_backend() -> Backend:
    """The NumPy backend (every step on the host)."""
    return Backend(np, name="numpy", requested="off")


#: What probing a CUDA device may raise besides CuPy's own error classes.
_PROBE_ERRORS: tuple[type[BaseException], ...] = (RuntimeError, OSError, ImportError)


def _cupy_backend(requested: str) -> tuple[Backend | None, str]:
    """CuPy on the current device, or (None, why not)."""
    try:
        import cupy as cp  # noqa: PLC0415 - optional dependency
    except ImportError as err:
        return None, f"CuPy is not installed ({err}); install skymosaic[gpu]"
    try:
        n = cp.cuda.runtime.getDeviceCount()
        if n < 1:
            return None, "CuPy found no CUDA device"
        dev = cp.cuda.Device()
        _ = dev.compute_capability  # touches the device: raises when it does not answer
        name = cp.cuda.runtime.getDeviceProperties(dev.id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
    except _PROBE_ERRORS + _cupy_error_types() as err:
        # a driver/runtime error or a missing CUDA library: no usable device
        return None, f"no usable CUDA device ({type(err).__name__}: {err})"
    be = Backend(cp, device=dev, name="cupy", requested=requested)
    be.device = f"cuda:{dev.id} {name}"
    return be, ""


def select_backend(use_gpu: Literal["auto", "on", "off"] | str = "auto") -> Backend:
    """The backend for a run.

    Parameters
    ----------
    use_gpu : {"auto", "on", "off"}
        ``auto``: CuPy when it imports and a CUDA device answers, else NumPy; ``on``: CuPy
        or an error; ``off``: NumPy. The environment variable ``SKYMOSAIC_USE_GPU``
        overrides ``auto`` only (so a site can switch the GPU off without editing configs).

    Returns
    -------
    Backend

    Raises
    ------
    GPUUnavailableError
        For ``use_gpu="on"`` without CuPy or without a device (the message says which).
    ValueError
        For any other value.
    """
    if use_gpu not in USE_GPU_CHOICES:
        raise ValueError(f"use_gpu must be one of {USE_GPU_CHOICES}, got {use_gpu!r}")
    if use_gpu == "auto":
        env = os.environ.get("SKYMOSAIC_USE_GPU", "").strip().lower()
        if env in ("on", "off"):
            use_gpu = env
    if use_gpu == "off":
        return cpu_backend()
    be, why = _cupy_backend(use_gpu)
    if be is not None:
        logger.info("GPU backend: CuPy on %s", be.device)
        return be
    if use_gpu == "on":
        raise GPUUnavailableError(
            f"run.use_gpu = 'on' but {why}; use 'auto' or 'off' to run on the CPU"
        )
    logger.info("GPU backend not used (%s); running on the CPU", why)
    be = cpu_backend()
    be.requested = "auto"
    return be

"""Exceptions shared across layers (at the bottom: this module imports nothing of skymosaic).

`ConfigError` lives here so that low layers (the backend's `GPUUnavailableError`) can
subclass it without importing `skymosaic.config`, which reads its choice lists from the
algorithm modules; `skymosaic.config` re-exports it under the same name.
"""

from __future__ import annotations

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad configuration: unknown key, wrong type or out-of-range value."""

"""Small helpers shared by the benchmark scripts: timing, peak memory, machine, tables.

Measuring peak memory per tool needs a fresh process per tool (a process's high-water
mark never goes down), so a benchmark runs each measured tool in a worker subprocess:

* the parent calls `run_worker` with the worker's command line; it polls the resident
  memory of the worker's process tree every ``poll_interval`` seconds (psutil) and parses
  the JSON document that the worker prints with `emit_result`;
* the worker calls `rss_now` / `peak_rss` around its work (the kernel's exact high-water
  mark of the process's address space) and reports them in that document.

`peak_rss` reads ``VmHWM`` from ``/proc/self/status``, not ``ru_maxrss``: on Linux
``ru_maxrss`` survives ``exec``, so a worker started by a parent that holds 300 MB reports
at least 300 MB however little it uses itself (``VmHWM`` belongs to the new address space
only). Both count every resident page, shared libraries and memory-mapped files included;
the polled ``RssAnon`` peak counts only anonymous memory (what a memory budget bounds) but
can miss spikes shorter than the polling interval. Both are reported.
"""

from __future__ import annotations

import gc
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "RESULT_MARKER",
    "BestOf",
    "RssPoller",
    "best_of",
    "emit_result",
    "format_bytes",
    "format_table",
    "machine_info",
    "peak_rss",
    "rss_now",
    "run_worker",
]

#: Prefix of the one stdout line that carries a worker's JSON result.
RESULT_MARKER = "@@BENCH-RESULT@@ "


# -- memory -------------------------------------------------------------------------------


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes.

    ``VmHWM`` where ``/proc`` exists (see the module docstring for why not ``ru_maxrss``),
    else ``ru_maxrss``.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(kib) * (1 if sys.platform == "darwin" else 1024)


def rss_now() -> int:
    """This process's current resident set size, in bytes."""
    return int(psutil.Process().memory_info().rss)


def _anon_rss(proc: psutil.Process) -> int:
    """Anonymous resident memory of one process (Linux ``RssAnon``), else its RSS."""
    try:
        status = Path(f"/proc/{proc.pid}/status").read_text()
    except OSError:
        return int(proc.memory_info().rss)
    for line in status.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return int(proc.memory_info().rss)


class RssPoller:
    """Poll the RSS (and anonymous RSS) of a process and its children in a thread.

    Use as a context manager; ``peak_rss`` and ``peak_anon`` are in bytes. Polling can
    miss a spike shorter than ``interval``: prefer `peak_rss` in the process for the exact peak.
    """

    def __init__(self, pid: int | None = None, *, interval: float = 0.02) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.interval = interval
        self.peak_rss = 0
        self.peak_anon = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        rss = anon = 0
        for p in procs:
            try:
                rss += int(p.memory_info().rss)
                anon += _anon_rss(p)
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_anon = max(self.peak_anon, anon)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssPoller:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


# -- workers ------------------------------------------------------------------------------


def emit_result(result: dict[str, Any]) -> None:
    """Print a worker's result (plus its `peak_rss` as ``peak_rss``) as one marked JSON line."""
    doc = dict(result)
    doc.setdefault("peak_rss", peak_rss())
    sys.stdout.write(RESULT_MARKER + json.dumps(doc) + "\n")
    sys.stdout.flush()


def run_worker(
    args: Sequence[str],
    *,
    timeout: float | None = None,
    poll_interval: float = 0.02,
    env: dict[str, str] | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """Run ``python ARGS`` in a fresh process and return its `emit_result` document.

    The document gains ``poll_peak_rss`` and ``poll_peak_anon`` (bytes, process tree,
    polled) and ``elapsed_s`` (the whole subprocess, start-up included). The worker's other
    output is echoed to stderr when ``echo``.

    Raises
    ------
    RuntimeError
        If the worker fails or prints no result line (its output is in the message).
    """
    cmd = [sys.executable, *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, **(env or {})},
    )
    with RssPoller(proc.pid, interval=poll_interval) as poller:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            raise RuntimeError(f"worker {cmd} timed out after {timeout} s:\n{out}") from None
    elapsed = time.perf_counter() - t0
    result = None
    other = []
    for line in out.splitlines():
        if line.startswith(RESULT_MARKER):
            result = json.loads(line[len(RESULT_MARKER):])
        else:
            other.append(line)
    if echo and other:
        sys.stderr.write("\n".join(other) + "\n")
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"worker {cmd} exited with {proc.returncode}:\n{out}")
    result["poll_peak_rss"] = poller.peak_rss
    result["poll_peak_anon"] = poller.peak_anon
    result["elapsed_s"] = elapsed
    return result


# -- timing -------------------------------------------------------------------------------


@dataclass
class BestOf:
    """Wall times (s) of repeated runs; ``value`` is what the last run returned."""

    times: list[float] = field(default_factory=list)
    value: Any = None

    @property
    def best(self) -> float:
        return min(self.times)

    @property
    def median(self) -> float:
        s = sorted(self.times)
        return s[len(s) // 2]


def best_of(fn: Callable[[], Any], repeat: int) -> BestOf:
    """Call ``fn`` ``repeat`` times and time each call (``time.perf_counter``).

    The previous run's value is dropped (and garbage collected) *before* the next run
    starts, so two results never coexist and peak memory is that of one run.
    """
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    out = BestOf()
    for _ in range(repeat):
        out.value = None
        gc.collect()
        t0 = time.perf_counter()
        out.value = fn()
        out.times.append(time.perf_counter() - t0)
    return out


# -- reporting ----------------------------------------------------------------------------


def format_bytes(n: float) -> str:
    """``123.4 MiB`` style."""
    return f"{n / 2**20:.1f} MiB"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of ``rows`` (dicts), columns in order of first appearance."""
    if not rows:
        return ""
    if columns is None:
        columns = list(dict.fromkeys(k for r in rows for k in r))
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    lines += [
        "| " + " | ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) + " |"
        for row in cells
    ]
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU model, logical CPUs, usable CPUs, RAM, OS and Python, for the report."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "ram": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }

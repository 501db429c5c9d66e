"""Scale benchmark (issue 7, not in CI): a synthetic Seestar survey through the whole pipeline.

A smart-telescope session of N raw Bayer frames (default 1000) is generated on the fly:
ZWO Seestar S50 sub-exposures (1080 x 1920 px, W x H, portrait, uint16 GRBG, 2.39"/px,
WCS in the header, as the Seestar writes after its own plate solve) of a ``--panels``
mosaic (default 3 x 3 fields, ``--overlap`` 20 % between neighbours, ~N / panels frames
per field, observed one field after the other). Every frame has a dither (Gaussian,
``--dither-arcsec``) and the field rotation of an Alt-Az mount (``--rotation-rate`` degrees
per frame, accumulated over the session), sky level and transparency that drift slightly,
Poisson-like and read noise, and stars, galaxies and nebulosity rendered from one
`skymosaic.synth.make_truth_sky`; about 2 % of the frames carry a satellite trail. The frames
are written as FITS into ``--workdir`` (default a temporary folder, removed at the end
unless ``--keep``) by a process pool; generation is timed separately and is not part of
the pipeline time.

The pipeline runs in a child process: ``skymosaic run FRAMES -o OUT --no-plan`` with the
default configuration (classic mode: discover, verify + quality, quality selection,
cluster, stack master tiles, photometry, coadd, write), through ``skymosaic.cli.main``
exactly as the ``skymosaic`` entry point calls it. The child wraps the pipeline's phase
timer (``skymosaic.pipeline._Run.phase``) to snapshot, at every phase boundary, its CPU
time (``getrusage``), its I/O (``/proc/self/io``: bytes asked of the kernel and bytes that
hit the disk), its exact peak RSS of the phase (``VmHWM``, reset per phase through
``/proc/self/clear_refs``) and the machine's CPU counters (``/proc/stat``: the load of the
other users, I/O wait). Nothing under ``src/`` is modified. The parent polls the child's
resident memory (total and anonymous) every 50 ms and reads ``run.json`` for the
pipeline's own per-phase timings.

``--profile`` runs the child under cProfile with one profiler per thread and per phase
(the pipeline's thread pools included: ``threading.setprofile`` starts a profiler in
every new thread), and prints, per phase, the top functions by own time and by
cumulative time. Profiling slows Python-heavy code more than NumPy/OpenCV kernels, so
take wall times from a run without ``--profile``.

What bounds a phase, from the snapshots: CPU-bound when its CPU time is close to
``wall x usable cores`` (here 2) or to ``wall x 1`` for serial code; disk-bound when
``read_bytes``/``write_bytes`` are large and the CPU is idle (I/O wait up); Python
overhead when the profile's own time sits in Python functions rather than in
``{built-in ...}``/``{method ... of numpy ...}``/OpenCV calls.

Examples
--------
Validation runs::

    .venv/bin/python benchmarks/bench_scale.py --frames 40
    .venv/bin/python benchmarks/bench_scale.py --frames 100 --profile

The scale run of issue 7 (generation takes 0.7 to 2 s per frame per worker, so 6 to 17
minutes for 1000 frames on 2 cores; 4.2 GB of frames plus the pipeline's scratch, about
4.2 GB per master tile at a time, on disk)::

    .venv/bin/python benchmarks/bench_scale.py --frames 1000 --workdir /var/tmp/scale --keep

A second run on the same frames (``--keep`` above) skips the generation; ``--report``
re-prints the tables and profile of a kept run::

    .venv/bin/python benchmarks/bench_scale.py --frames 1000 --workdir /var/tmp/scale --keep
    .venv/bin/python benchmarks/bench_scale.py --report /var/tmp/scale

The child imports ``skymosaic`` from the environment. To measure one commit while the
working tree is being edited, extract it and put its ``src`` first on the path::

    git archive HEAD src | tar -x -C /tmp/head
    PYTHONPATH=/tmp/head/src .venv/bin/python benchmarks/bench_scale.py --frames 40

Peak RSS (``VmHWM``) counts every resident page of the process, the file-backed pages of
the stacking's memory-mapped scratch cube included; ``peak anon`` counts only anonymous
memory. Both are reported; the target is checked against the larger, peak RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import itertools
import json
import math
import os
import pstats
import resource
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import format_table, machine_info

#: Seestar S50: 2.9 um pixels, 250 mm focal length.
SCALE_ARCSEC = 206.264806 * 2.9 / 250.0
SHAPE = (1920, 1080)  # (H, W): portrait, as the Seestar writes its subs
RESPONSE = np.array([0.72, 1.0, 0.62], dtype=np.float32)  # R, G, B photosite response
TARGET_WALL_S = 600.0
TARGET_RSS = 4 * 2**30
CENTER = (189.0, 41.1)  # M 106
DATE0 = datetime(2024, 4, 2, 21, 0, 0)
SPEC_VERSION = 1


# == the synthetic session ================================================================


@dataclass(frozen=True)
class SessionSpec:
    """Everything the frames depend on (a ``--keep`` folder is reused when it matches)."""

    frames: int
    panels: tuple[int, int]
    overlap: float
    dither_arcsec: float
    rotation_rate_deg: float
    seed: int
    shape: tuple[int, int] = SHAPE
    version: int = SPEC_VERSION

    @property
    def n_panels(self) -> int:
        return self.panels[0] * self.panels[1]

    def panel_of(self, i: int) -> int:
        """Panels are observed one after the other, ~frames / panels each."""
        return i * self.n_panels // self.frames

    def panel_offset_arcsec(self, p: int) -> tuple[float, float]:
        """(xi, eta) of a panel's centre relative to the mosaic centre."""
        nx, ny = self.panels
        h, w = self.shape
        step_x = w * SCALE_ARCSEC * (1.0 - self.overlap)
        step_y = h * SCALE_ARCSEC * (1.0 - self.overlap)
        ix, iy = p % nx, p // nx
        return (ix - (nx - 1) / 2) * step_x, (iy - (ny - 1) / 2) * step_y

    def truth_size_deg(self) -> tuple[float, float]:
        nx, ny = self.panels
        h, w = self.shape
        diag = math.hypot(h, w) * SCALE_ARCSEC
        margin = diag + 8 * self.dither_arcsec
        sx = ((nx - 1) * w * SCALE_ARCSEC * (1 - self.overlap) + margin) / 3600 * 1.05
        sy = ((ny - 1) * h * SCALE_ARCSEC * (1 - self.overlap) + margin) / 3600 * 1.05
        return sx, sy


def _tan_deproject(xi: float, eta: float, ra0: float, dec0: float) -> tuple[float, float]:
    """Gnomonic (xi, eta) [arcsec] about (ra0, dec0) -> (ra, dec) [deg]."""
    x, y = math.radians(xi / 3600), math.radians(eta / 3600)
    d0 = math.radians(dec0)
    rho = math.hypot(x, y)
    c = math.atan(rho)
    if rho == 0:
        return ra0, dec0
    dec = math.asin(math.cos(c) * math.sin(d0) + y * math.sin(c) * math.cos(d0) / rho)
    den = rho * math.cos(d0) * math.cos(c) - y * math.sin(d0) * math.sin(c)
    ra = ra0 + math.degrees(math.atan2(x * math.sin(c), den))
    return ra % 360.0, math.degrees(dec)


_TRUTH = None
_SPEC: SessionSpec | None = None
_CMAP: np.ndarray | None = None


def _init_worker(spec: SessionSpec) -> None:
    """Pool initialiser: the truth sky (deterministic from the seed) and the Bayer map."""
    global _TRUTH, _SPEC, _CMAP  # noqa: PLW0603 - per-process cache of the pool
    from skymosaic.synth import make_truth_sky  # noqa: PLC0415

    _SPEC = spec
    _TRUTH = make_truth_sky(center=CENTER, size_deg=spec.truth_size_deg(),
                            pixel_scale_arcsec=SCALE_ARCSEC, channels=3, fwhm_arcsec=5.0,
                            seed=spec.seed)
    h, w = spec.shape
    cmap = np.empty((h, w), dtype=np.intp)  # GRBG: row 0 = G R G R, row 1 = B G B G
    cmap[0::2, 0::2], cmap[0::2, 1::2], cmap[1::2, 0::2], cmap[1::2, 1::2] = 1, 0, 2, 1
    _CMAP = cmap


def _frame_name(i: int) -> str:
    return f"Light_M106_10.0s_IRCUT_{i:04d}.fits"


def _make_frame(args: tuple[int, str]) -> float:
    """Render and write frame ``i`` (the model of `skymosaic.synth.make_seestar_frames`)."""
    from astropy.io import fits  # noqa: PLC0415

    from skymosaic.synth import celestial_wcs  # noqa: PLC0415

    i, folder = args
    t0 = time.perf_counter()
    spec, truth, cmap = _SPEC, _TRUTH, _CMAP
    assert spec is not None and truth is not None and cmap is not None
    rng = np.random.default_rng([spec.seed, i])
    p = spec.panel_of(i)
    xi, eta = spec.panel_offset_arcsec(p)
    dxi, deta = rng.normal(0.0, spec.dither_arcsec, 2)
    ra, dec = _tan_deproject(xi + dxi, eta + deta, *CENTER)
    rot = -0.5 * spec.rotation_rate_deg * spec.frames + spec.rotation_rate_deg * i
    rot += float(rng.normal(0.0, 0.02))
    h, w = spec.shape
    wcs = celestial_wcs(spec.shape, center=(ra, dec), pixel_scale_arcsec=SCALE_ARCSEC,
                        rotation_deg=rot)
    colour = truth.render(wcs, spec.shape, channels=3)
    transparency = np.float32(1.0 - 0.08 * abs(math.sin(i / 97.0)) - rng.uniform(0, 0.02))
    sky = np.float32(400.0 * (1.0 + 0.1 * i / spec.frames))
    signal = np.take_along_axis(colour, cmap[None], axis=0)[0]
    signal += sky
    signal *= RESPONSE[cmap] * transparency
    if rng.random() < 0.02:  # satellite trail, 3 px wide
        ang = rng.uniform(0, math.pi)
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        yy, xx = np.ogrid[0:h, 0:w]
        dist = np.abs((xx - x0) * math.sin(ang) - (yy - y0) * math.cos(ang))
        signal += np.float32(3000.0) * (dist < 1.5)
    noise = rng.standard_normal(spec.shape, dtype=np.float32)
    noise *= np.sqrt(np.float32(64.0) + np.maximum(signal, 0.0))
    signal += noise
    signal += np.float32(200.0)  # bias
    raw = np.clip(np.rint(signal), 0, 65535).astype(np.uint16)
    hdr = fits.Header()
    date = DATE0 + timedelta(seconds=10.5 * i + 30.0 * p)
    for key, value in (("INSTRUME", "Seestar S50"), ("TELESCOP", "Seestar S50"),
                       ("OBJECT", "M 106"), ("EXPTIME", 10.0),
                       ("DATE-OBS", date.strftime("%Y-%m-%dT%H:%M:%S.%f")),
                       ("FILTER", "IRCUT"), ("BAYERPAT", "GRBG"), ("XBAYROFF", 0),
                       ("YBAYROFF", 0), ("FOCALLEN", 250), ("XPIXSZ", 2.9), ("YPIXSZ", 2.9),
                       ("XBINNING", 1), ("YBINNING", 1), ("GAIN", 80), ("CCD-TEMP", 21.5),
                       ("IMAGETYP", "Light"), ("RA", float(ra)), ("DEC", float(dec))):
        hdr[key] = value
    hdr.update(wcs.to_header())
    path = Path(folder) / _frame_name(i)
    tmp = path.with_suffix(".fits.part")
    fits.PrimaryHDU(data=raw, header=hdr).writeto(tmp, overwrite=True)
    os.replace(tmp, path)
    return time.perf_counter() - t0


def generate(spec: SessionSpec, folder: Path, workers: int) -> dict[str, Any]:
    """Write the session's frames into ``folder`` (reused when ``spec.json`` matches)."""
    stamp = folder / "spec.json"
    want = json.dumps(asdict(spec), sort_keys=True)
    if stamp.is_file() and stamp.read_text() == want and all(
        (folder / _frame_name(i)).is_file() for i in range(spec.frames)
    ):
        print(f"reusing {spec.frames} frames in {folder}", file=sys.stderr)
        return {"reused": True, "seconds": 0.0, "workers": 0}
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    tasks = [(i, str(folder)) for i in range(spec.frames)]
    per_frame = []
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker,
                             initargs=(spec,)) as pool:
        for k, dt in enumerate(pool.map(_make_frame, tasks, chunksize=4)):
            per_frame.append(dt)
            if (k + 1) % 100 == 0:
                print(f"  generated {k + 1}/{spec.frames} frames", file=sys.stderr)
    stamp.write_text(want)
    return {"reused": False, "seconds": time.perf_counter() - t0, "workers": workers,
            "cpu_s_per_frame": float(np.mean(per_frame))}


# == the child: the pipeline, instrumented =================================================


def _read_kv(path: str) -> dict[str, int]:
    out = {}
    try:
        for line in Path(path).read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts and parts[0].isdigit():
                out[key] = int(parts[0]) * (1024 if parts[-1] == "kB" else 1)
    except OSError:
        pass
    return out


def _system_cpu() -> dict[str, float]:
    """Machine-wide CPU seconds (all cores): busy and iowait, from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return {}
    v = [int(x) / os.sysconf("SC_CLK_TCK") for x in fields]
    user, nice, system, _idle, iowait, irq, softirq = v[:7]
    steal = v[7] if len(v) > 7 else 0.0
    return {"busy": user + nice + system + irq + softirq + steal, "iowait": iowait}


class _Probe:
    """Snapshots of this process at phase boundaries; per-segment exact peak RSS."""

    def __init__(self) -> None:
        self.can_reset = True
        self.events: list[dict[str, Any]] = []

    def snapshot(self, label: str) -> dict[str, Any]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        st = _read_kv("/proc/self/status")
        pio = _read_kv("/proc/self/io")
        snap = {
            "label": label, "t": time.perf_counter(), "epoch": time.time(),
            "cpu_user": ru.ru_utime, "cpu_sys": ru.ru_stime, "majflt": ru.ru_majflt,
            "nvcsw": ru.ru_nvcsw, "nivcsw": ru.ru_nivcsw,
            "rchar": pio.get("rchar", 0), "wchar": pio.get("wchar", 0),
            "read_bytes": pio.get("read_bytes", 0), "write_bytes": pio.get("write_bytes", 0),
            "hwm": st.get("VmHWM", 0), "rss": st.get("VmRSS", 0),
            "rss_anon": st.get("RssAnon", 0), "rss_file": st.get("RssFile", 0),
            "sys": _system_cpu(),
        }
        if self.can_reset:  # reset VmHWM: the next snapshot's hwm is that segment's peak
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                self.can_reset = False
        self.events.append(snap)
        return snap


class _ThreadProfiles:
    """cProfile per phase, in the main thread and in every thread started during a phase."""

    def __init__(self) -> None:
        self.phase = "(outside phases)"
        self.main: cProfile.Profile | None = None
        self.by_phase: dict[str, list[cProfile.Profile]] = {}
        self._lock = threading.Lock()

    def _hook(self, frame, event, arg):  # sys.setprofile signature
        prof = cProfile.Profile()
        with self._lock:
            self.by_phase.setdefault(self.phase, []).append(prof)
        prof.enable()  # replaces this hook for the rest of the thread's life

    def start(self, phase: str) -> None:
        if self.main is not None:
            self.main.disable()
        self.phase = phase
        self.main = cProfile.Profile()
        self.by_phase.setdefault(phase, []).append(self.main)
        threading.setprofile(self._hook)
        self.main.enable()

    def stop(self) -> None:
        if self.main is not None:
            self.main.disable()
            self.main = None
        threading.setprofile(None)  # type: ignore[arg-type]

    def dump(self, folder: Path) -> dict[str, str]:
        paths = {}
        for k, (phase, profs) in enumerate(self.by_phase.items()):
            stats = None
            for prof in profs:
                with contextlib.suppress(TypeError, ValueError):
                    prof.create_stats()
                    if not prof.stats:  # type: ignore[attr-defined]
                        continue
                    if stats is None:
                        stats = pstats.Stats(prof)
                    else:
                        stats.add(prof)
            if stats is not None:
                path = folder / f"profile_{k:02d}_{phase.strip('()').replace(' ', '_')}.pstats"
                stats.dump_stats(path)
                paths[phase] = str(path)
        return paths


def child(spec_path: str) -> int:
    """Run the CLI on the frames with the instrumentation; write ``child.json``."""
    t_start = time.perf_counter()
    job = json.loads(Path(spec_path).read_text())
    probe = _Probe()
    probe.snapshot("start")
    from skymosaic import cli, pipeline  # noqa: PLC0415

    profiles = _ThreadProfiles() if job["profile"] else None
    original = getattr(getattr(pipeline, "_Run", None), "phase", None)
    instrumented = original is not None
    if instrumented:

        @contextlib.contextmanager
        def phase(self, name):
            probe.snapshot(f"gap:{name}")
            if profiles is not None:
                profiles.start(name)
            try:
                with original(self, name):
                    yield
            finally:
                probe.snapshot(f"end:{name}")
                if profiles is not None:
                    profiles.start("(outside phases)")

        pipeline._Run.phase = phase  # type: ignore[union-attr]
    probe.snapshot("imported")
    if profiles is not None:
        profiles.start("(outside phases)")
    t_run = time.perf_counter()
    code = cli.main(job["argv"])
    t_end = time.perf_counter()
    if profiles is not None:
        profiles.stop()
    probe.snapshot("end")
    result = {
        "code": code, "instrumented": instrumented, "hwm_reset": probe.can_reset,
        "import_s": t_run - t_start, "run_s": t_end - t_run, "events": probe.events,
        "profiles": profiles.dump(Path(job["workdir"])) if profiles is not None else {},
    }
    Path(job["result"]).write_text(json.dumps(result))
    return int(code)


# == the parent: run, poll, report =========================================================


class _Poller:
    """Poll the child's tree: total and anonymous RSS every ``interval`` s, with time stamps."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        import psutil  # noqa: PLC0415

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int, int]] = []  # (epoch, rss, anon)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil  # noqa: PLC0415

        while not self._stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            rss = anon = 0
            for p in procs:
                st = _read_kv(f"/proc/{p.pid}/status")
                rss += st.get("VmRSS", 0)
                anon += st.get("RssAnon", 0)
            self.samples.append((time.time(), rss, anon))
            self._stop.wait(self.interval)

    def __enter__(self) -> _Poller:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float = -math.inf, t1: float = math.inf) -> tuple[int, int]:
        sel = [(r, a) for t, r, a in self.samples if t0 <= t <= t1]
        return (max(r for r, _ in sel), max(a for _, a in sel)) if sel else (0, 0)


def run_pipeline_child(frames: Path, out: Path, workdir: Path, args) -> dict[str, Any]:
    argv = ["run", str(frames), "-o", str(out), "--no-plan"]
    if args.threads is not None:
        argv += ["--threads", str(args.threads)]
    if args.memory_budget is not None:
        argv += ["--memory-budget", str(args.memory_budget)]
    job = {"argv": argv, "profile": args.profile, "workdir": str(workdir),
           "result": str(workdir / "child.json")}
    (workdir / "child_job.json").write_text(json.dumps(job))
    log = workdir / "child_output.log"
    import subprocess  # noqa: PLC0415

    t0 = time.perf_counter()
    with open(log, "w") as fh:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child",
               str(workdir / "child_job.json")]
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        with _Poller(proc.pid) as poller:
            proc.wait()
    wall = time.perf_counter() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        tail = log.read_text()[-4000:]
        raise RuntimeError(f"pipeline child exited with {proc.returncode}; output tail:\n{tail}")
    res = json.loads((workdir / "child.json").read_text())
    res["wall_s"] = wall
    res["ru_maxrss"] = ru.ru_maxrss * 1024  # includes generation workers: reference only
    res["poll_peak_rss"], res["poll_peak_anon"] = poller.peak()
    res["report"] = json.loads((out / "run.json").read_text())
    res["phase_poll"] = {}
    ev = res["events"]
    for a, b in itertools.pairwise(ev):
        if b["label"].startswith("end:"):
            res["phase_poll"][b["label"][4:]] = poller.peak(a["epoch"], b["epoch"])
    return res


def _segments(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Per phase (and the gaps between them): wall, CPU, I/O, peak memory, others' load."""
    ev = res["events"]
    rows = []
    for a, b in itertools.pairwise(ev):
        label = b["label"]
        if label.startswith("end:"):
            name = label[4:]
        elif label == "imported":
            name = "(start-up, imports)"
        elif label.startswith("gap:") or label == "end":
            name = "(between phases)"
        else:
            continue
        wall = b["t"] - a["t"]
        cpu = (b["cpu_user"] + b["cpu_sys"]) - (a["cpu_user"] + a["cpu_sys"])
        sys_busy = b["sys"].get("busy", 0) - a["sys"].get("busy", 0)
        iowait = b["sys"].get("iowait", 0) - a["sys"].get("iowait", 0)
        row = {
            "phase": name, "wall": wall, "cpu": cpu, "user": b["cpu_user"] - a["cpu_user"],
            "read_gb": (b["read_bytes"] - a["read_bytes"]) / 1e9,
            "rchar_gb": (b["rchar"] - a["rchar"]) / 1e9,
            "write_gb": (b["write_bytes"] - a["write_bytes"]) / 1e9,
            "wchar_gb": (b["wchar"] - a["wchar"]) / 1e9,
            "majflt": b["majflt"] - a["majflt"], "nivcsw": b["nivcsw"] - a["nivcsw"],
            "hwm": b["hwm"] if res.get("hwm_reset") else None,
            "others_cpu": max(sys_busy - cpu, 0.0), "iowait": iowait,
        }
        poll = res.get("phase_poll", {}).get(name)
        row["poll_anon"] = poll[1] if poll else None
        prev = next((r for r in rows if r["phase"] == name == "(between phases)"), None)
        if prev is not None:
            for k in ("wall", "cpu", "user", "read_gb", "rchar_gb", "write_gb", "wchar_gb",
                      "majflt", "nivcsw", "others_cpu", "iowait"):
                prev[k] += row[k]
            prev["hwm"] = max(prev["hwm"] or 0, row["hwm"] or 0) or None
            continue
        rows.append(row)
    rows.sort(key=lambda r: r["phase"] == "(between phases)")
    return rows


def _gib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**30:.2f}"


def _bound(row: dict[str, Any], cores: int) -> str:
    """A first reading of what bounds a phase (the profile refines it)."""
    wall = max(row["wall"], 1e-9)
    util = row["cpu"] / wall
    io_gb = row["read_gb"] + row["write_gb"]
    if wall < 0.5:
        return "negligible"
    if util >= 0.8 * cores:
        return f"CPU, {cores} cores busy"
    if io_gb / wall > 0.15 and util < 0.6 * cores:
        return f"disk ({io_gb / wall * 1e3:.0f} MB/s) + CPU {util:.1f} cores"
    if util > 0.85 and util < 1.25:
        return "CPU, ~1 core (serial part / GIL)"
    others = row["others_cpu"] / wall
    return f"CPU {util:.1f} of {cores} cores; waits (other users {others:.1f} cores)"


def print_report(args, spec: SessionSpec, gen: dict, res: dict[str, Any], cores: int) -> dict:
    rep = res["report"]
    timings = rep.get("timings_s", {})
    total = res["wall_s"]
    pipe_s = res["run_s"]
    peak_hwm = max((e["hwm"] for e in res["events"]), default=0) if res.get("hwm_reset") else (
        res["events"][-1]["hwm"])
    peak = max(peak_hwm, res["poll_peak_rss"])
    out = rep.get("output", {})
    h, w = out.get("shape", [0, 0])
    tiles = rep.get("tiles", [])
    frames_mpix = spec.shape[0] * spec.shape[1] / 1e6
    summary = [{
        "frames": spec.frames,
        "panels": f"{spec.panels[0]}x{spec.panels[1]}",
        "frame Mpix": f"{frames_mpix:.2f}",
        "input GB": f"{spec.frames * frames_mpix * 2e6 / 1e9:.2f}",
        "used": rep.get("frames", {}).get("used", "?"),
        "tiles": len(tiles),
        "mosaic": f"{w}x{h}x{out.get('channels', '?')}",
        "wall s": f"{total:.1f}",
        "pipeline s": f"{pipe_s:.1f}",
        "CPU s": f"{res['events'][-1]['cpu_user'] + res['events'][-1]['cpu_sys']:.0f}",
        "peak RSS GiB": _gib(peak),
        "peak anon GiB": _gib(res["poll_peak_anon"]),
        "frames/s": f"{spec.frames / total:.2f}",
        "600 s": "met" if total <= TARGET_WALL_S else "**NOT met**",
        "4 GiB": "met" if peak <= TARGET_RSS else "**NOT met**",
    }]
    print("\n## Scale benchmark\n")
    m = machine_info()
    print(f"machine: {m['cpu']}, {m['usable_cpus']} usable CPUs, {m['ram']} RAM, "
          f"load {m['load_avg_1m']} at the end; python {m['python']}")
    print(f"command: {Path(sys.executable).name} {' '.join(sys.argv)}")
    if gen["reused"]:
        print("generation: frames reused from an earlier run")
    else:
        print(f"generation: {gen['seconds']:.1f} s on {gen['workers']} processes "
              f"({gen['cpu_s_per_frame']:.2f} s per frame in a worker; not in the pipeline time)")
    threads = args.threads if args.threads is not None else "default (all cores)"
    print(f"pipeline threads: {threads}; "
          f"memory budget: {args.memory_budget or 'default (25 % of RAM)'} MiB; "
          f"profile: {'ON (times inflated)' if args.profile else 'off'}\n")
    print(format_table(summary))
    print("\nwall s = child process (interpreter start, imports, pipeline, exit); pipeline s = "
          "skymosaic.cli.main; peak RSS = max(exact VmHWM per phase, 50 ms poll); "
          "peak anon = polled RssAnon.\n")
    rows = []
    segs = _segments(res)
    for s in segs:
        name = s["phase"]
        rows.append({
            "phase": name,
            "run.json s": f"{timings[name]:.2f}" if name in timings else "-",
            "wall s": f"{s['wall']:.2f}",
            "% of total": f"{100 * s['wall'] / total:.1f}",
            "CPU s": f"{s['cpu']:.1f}",
            "cores used": f"{s['cpu'] / max(s['wall'], 1e-9):.2f}",
            "others' cores": f"{s['others_cpu'] / max(s['wall'], 1e-9):.2f}",
            "disk read GB": f"{s['read_gb']:.2f}",
            "read() GB": f"{s['rchar_gb']:.2f}",
            "disk write GB": f"{s['write_gb']:.2f}",
            "peak RSS GiB": _gib(s["hwm"]),
            "peak anon GiB": _gib(s["poll_anon"]),
            "bound (first reading)": _bound(s, cores),
        })
    print(format_table(rows))
    rest = total - sum(s["wall"] for s in segs)
    print(f"\nprocess exit and the rest: {rest:.2f} s. 'read() GB' = bytes read through "
          "syscalls (page cache hits included); 'disk read GB' = bytes the block layer read. "
          "'others' cores' = CPU used by other processes on the machine meanwhile.")
    if tiles:
        sizes = [t["shape"] for t in tiles]
        print(f"master tiles: {len(tiles)}, frames per tile "
              f"{min(t['n_frames'] for t in tiles)}..{max(t['n_frames'] for t in tiles)}, "
              f"tile shape (C, H, W) {sizes[0]} .. {sizes[-1]}")
    return {"summary": summary[0], "phases": segs, "timings": timings, "wall_s": total,
            "peak_rss": peak, "generation": gen, "spec": asdict(spec),
            "photometry_timings": rep.get("photometry", {}).get("timings_s")}


def _is_wait(func: str) -> bool:
    return any(w in func for w in ("'acquire' of '_thread", "'get' of '_queue", "time.sleep",
                                   "'wait' of", "select.", "_thread.lock"))


def print_profile(res: dict[str, Any], top: int, total_wall: float) -> None:
    if not res.get("profiles"):
        return
    print("\n## Profile (cProfile in every thread, per phase; times inflated by profiling)\n")
    for phase, path in res["profiles"].items():
        st = pstats.Stats(path)
        tot = sum(v[2] for v in st.stats.values())  # own time, all threads
        idle = sum(v[2] for (f, _, fn), v in st.stats.items() if f == "~" and _is_wait(fn))
        busy = max(tot - idle, 1e-9)
        if tot < 0.05 * total_wall and phase != "stack":
            continue
        print(f"### {phase}: own time {tot:.1f} s summed over threads, of which {idle:.1f} s "
              f"waiting on locks/queues (a thread waiting for the pool); busy {busy:.1f} s\n")
        for key, title in (("tottime", "own time"), ("cumulative", "cumulative")):
            buf = io.StringIO()
            st.stream = buf  # type: ignore[attr-defined]
            st.sort_stats(key).print_stats(top)
            lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
            start = next((k for k, ln in enumerate(lines) if "ncalls" in ln), 0)
            print(f"top {top} by {title}:\n")
            print("\n".join("    " + ln for ln in lines[start:]))
            print()
        # own time by kind: numpy/OpenCV/astropy C calls vs Python code, per package
        kinds: dict[str, float] = {}
        for (fname, _line, func), v in st.stats.items():
            if fname == "~" and _is_wait(func):
                continue
            if fname == "~":
                kind = "C: " + (func.split("'")[1] if "'" in func else func)[:60]
            else:
                parts = Path(fname).parts
                pkg = next((p for p in ("skymosaic", "astropy", "numpy", "scipy", "cv2", "sep",
                                        "concurrent", "threading") if p in parts), "other")
                kind = f"py: {pkg}"
            kinds[kind] = kinds.get(kind, 0.0) + v[2]
        best = sorted(kinds.items(), key=lambda kv: -kv[1])[:12]
        print("busy own time by kind (C = a compiled call, py = Python code of a package):\n")
        for kind, t in best:
            print(f"    {100 * t / busy:5.1f} %  {t:8.2f} s  {kind}")
        print()


def _spec_from_args(args) -> SessionSpec:
    nx, ny = (int(v) for v in str(args.panels).lower().split("x"))
    return SessionSpec(frames=args.frames, panels=(nx, ny), overlap=args.overlap,
                       dither_arcsec=args.dither_arcsec, rotation_rate_deg=args.rotation_rate,
                       seed=args.seed)


def _report_and_profile(args, gen: dict, res: dict) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.threads:
        cores = min(cores or 1, args.threads)
    doc = print_report(args, _spec_from_args(args), gen, res, cores or 1)
    print_profile(res, args.profile_top, res["wall_s"])
    if args.json:
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=1000, help="raw frames (default 1000)")
    p.add_argument("--panels", default="3x3", help="mosaic fields NXxNY (default 3x3)")
    p.add_argument("--overlap", type=float, default=0.2, help="overlap of neighbouring fields")
    p.add_argument("--dither-arcsec", type=float, default=30.0, help="pointing sigma per axis")
    p.add_argument("--rotation-rate", type=float, default=0.02,
                   help="Alt-Az field rotation, degrees per frame (accumulates over the session)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="folder for frames and outputs (default: a temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (frames reusable)")
    p.add_argument("--gen-workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--threads", type=int, default=None, help="pipeline threads (default: all)")
    p.add_argument("--memory-budget", type=float, default=None,
                   help="pipeline memory budget in MiB (default: the pipeline's, 25 %% of RAM)")
    p.add_argument("--profile", action="store_true", help="cProfile the pipeline, per phase")
    p.add_argument("--profile-top", type=int, default=15)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--report", type=Path, default=None, metavar="WORKDIR",
                   help="only re-print the report of a run kept with --keep")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child)
    if args.report:  # re-print the report of a kept work folder
        saved = json.loads((args.report / "bench_result.json").read_text())
        for k, v in saved["args"].items():
            if k not in ("report", "json"):
                setattr(args, k, v)
        sys.argv = saved["argv"]
        return _report_and_profile(args, saved["gen"], saved["res"])
    spec = _spec_from_args(args)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="skymosaic_scale_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        frames = workdir / "frames"
        gen = generate(spec, frames, args.gen_workers)
        out = workdir / "out"
        if out.exists():
            shutil.rmtree(out)
        res = run_pipeline_child(frames, out, workdir, args)
        saved = {"res": res, "gen": gen, "args": {k: str(v) if isinstance(v, Path) else v
                                                 for k, v in vars(args).items()},
                 "argv": sys.argv}
        (workdir / "bench_result.json").write_text(json.dumps(saved, default=str))
        return _report_and_profile(args, gen, res)
    finally:
        if args.keep:
            print(f"\nwork folder kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

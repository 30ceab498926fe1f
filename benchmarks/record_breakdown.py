"""Where one ``record_store`` run spends its time (``bench_record.py --breakdown``): the caller's thread profiled
(cProfile: model compute, copies to the host, Datasets, waiting for the writer), the writer thread's jobs timed
(laying out groups, chunk files), and, on CUDA, the device-to-host copy speed of pageable and pinned host memory.
Printed, not asserted: it says which of these a GPU run's record/floor ratio is made of."""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections import defaultdict
from collections.abc import Callable

import torch

from alignit_probe.store import background

# the caller's-thread functions worth a line each (cProfile's cumulative seconds), in data-flow order
PHASES = {
    "stage_tensors": "compute: text encoder(s) + attn2 K/V on the device",
    "to_host_all": "copies to the host (device -> numpy, store dtype)",
    "record_batch": "one batch: compute + copies + Datasets",
    "_submit": "handing batches to the writer (waits while it is a batch behind)",
    "embedding_diagnostics": "embedding diagnostics",
    "commit": "commit: flush, trim, consolidate, rename",
    "job_fingerprint": "job fingerprint",
    "_write_batch": "writes done in this thread (CPU: no writer thread)",
}


def timed_writer() -> tuple[dict[str, list[float]], Callable[[], None]]:
    """Time every job the store's writer thread runs, by function name; returns (times, undo)."""
    times: dict[str, list[float]] = defaultdict(list)
    original = background.BackgroundWriter.submit

    def submit(self, fn, *args):
        def job(*a):
            t = time.perf_counter()
            try:
                return fn(*a)
            finally:
                times[getattr(fn, "__name__", str(fn))].append(time.perf_counter() - t)

        return original(self, job, *args)

    background.BackgroundWriter.submit = submit
    return times, lambda: setattr(background.BackgroundWriter, "submit", original)


def breakdown(run: Callable[[], float], per: int) -> None:
    """Run ``run`` (one record, returns its seconds) once profiled and print the shares (ms per prompt and model,
    ``per`` = prompts × models)."""
    times, undo = timed_writer()
    prof = cProfile.Profile()
    try:
        prof.enable()
        total = run()
        prof.disable()
    finally:
        undo()
    stats = pstats.Stats(prof, stream=io.StringIO()).stats
    cum: dict[str, float] = defaultdict(float)
    for (filename, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.items():
        if "alignit_probe" in filename and name in PHASES:
            cum[name] = max(cum[name], ct)  # the outermost frame of recursive or nested calls
    print(f"  breakdown of one profiled record run: {total:.2f} s ({total / per * 1e3:.1f} ms/prompt and model)")
    print("    caller's thread (cProfile, cumulative):")
    for name, what in PHASES.items():
        if name in cum:
            print(f"      {cum[name]:7.3f} s  {what}")
    busy = sum(sum(v) for v in times.values())
    print(f"    writer thread: busy {busy:.3f} s of {total:.2f} s")
    for name, v in sorted(times.items(), key=lambda kv: -sum(kv[1])):
        print(f"      {sum(v):7.3f} s  {name} x{len(v)} (longest {max(v):.3f} s)")
    top = pstats.Stats(prof, stream=(out := io.StringIO()))
    top.sort_stats("tottime").print_stats(12)
    print("    caller's thread, top 12 by own time:")
    for line in out.getvalue().splitlines():
        if line.strip() and ("{" in line or "/" in line) and "ncalls" not in line:
            print("      " + line.strip()[:150])


def copy_speeds(device: str, mib: int = 512, repeats: int = 3) -> None:
    """Device-to-host copy speed of ``mib`` MiB float16: pageable ``.cpu()``, into a preallocated pinned buffer,
    and into a pinned buffer taken from torch's caching host allocator per copy."""
    if not device.startswith("cuda"):
        return
    src = torch.randn(mib * 2**19, device=device, dtype=torch.float16)
    pinned = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)

    def pageable():
        src.cpu()

    def preallocated():
        pinned.copy_(src, non_blocking=True)
        torch.cuda.current_stream().synchronize()

    def cached():
        buf = torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
        buf.copy_(src, non_blocking=True)
        torch.cuda.current_stream().synchronize()

    t = time.perf_counter()
    torch.empty(src.shape, dtype=src.dtype, pin_memory=True)
    first_alloc = time.perf_counter() - t
    line = []
    for name, fn in (("pageable", pageable), ("pinned", preallocated), ("pinned (caching allocator)", cached)):
        fn()
        torch.cuda.synchronize()
        runs = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - t)
        line.append(f"{name} {mib / 1024 / min(runs):.1f} GiB/s")
    print(f"  device -> host, {mib} MiB float16, best of {repeats}: " + ", ".join(line))
    print(f"  a fresh pinned buffer of {mib} MiB takes {first_alloc * 1e3:.0f} ms to allocate")

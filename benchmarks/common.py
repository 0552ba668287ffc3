"""Shared pieces of the benchmark scripts: options, machine record, real data, tables, JSON and figures.

Every script imports this module (the scripts run as ``python benchmarks/bench_*.py``, so this folder
is on ``sys.path``). Nothing here times anything by itself.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "results" / "bench"
DROSO = Path(os.environ.get("MITOSEG_DROSO", REPO.parent / "shared" / "data" / "drosophila-vnc-stack1"))
UNTRAINED = "models are untrained, seeded (torch.manual_seed): weights do not change the speed"


# ---------------------------------------------------------------- options


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: --small, --out, --device, --seed."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", action="store_true", help="tiny sizes that run in seconds, to check the script")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto picks CUDA when present")
    p.add_argument("--seed", type=int, default=0, help="seed of the (untrained) model weights")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's, one per core)")
    return p


def setup(args: argparse.Namespace):
    """Apply --threads and return the torch device of --device ('auto' picks CUDA when present)."""
    import torch

    from mitoseg.models import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA GPU is visible to torch")
    return pick_device(args.device)


# ---------------------------------------------------------------- the record of the machine and run


def command_line() -> str:
    """The command that ran this script, quoted for a shell, with no path of this machine: the
    interpreter relative to the working directory (the repository root), else plain `python`."""
    exe = Path(sys.executable)
    exe = exe.relative_to(Path.cwd()) if exe.is_relative_to(Path.cwd()) else Path("python")
    return shlex.join([str(exe), *sys.argv])


def cpu_model() -> str:
    from mitoseg.train import cpu_name

    return cpu_name()


def memory_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def module_at(revision: str, name: str) -> Any:
    """`mitoseg.<name>` as it was at git `revision`, loaded beside today's as a module of its own (its
    imports are today's mitoseg): the baseline of a side-by-side timing in one run (--base)."""
    source = _git("show", f"{revision}:src/mitoseg/{name}.py")
    if source is None:
        sys.exit(f"--base {revision}: git cannot show src/mitoseg/{name}.py at that revision")
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(f"mitoseg_{name}_at_{revision}", None))
    sys.modules[module.__name__] = module  # dataclasses look their module up there
    exec(compile(source, f"{revision}:src/mitoseg/{name}.py", "exec"), module.__dict__)  # noqa: S102 - our own git history
    return module


def machine_info(device: Any = None) -> dict:
    """Date, command line, CPU/GPU, load, software versions and git state: the record of one run."""
    import monai
    import torch

    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command_line(),
        "host_platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_total_gib": memory_total_gib(),
        "load_average_1_5_15_at_start": [round(x, 2) for x in os.getloadavg()],
        "device": str(device) if device is not None else None,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "scipy": _version("scipy"),
        "zarr": _version("zarr"),
        "cc3d": _version("connected-components-3d"),
        "mitoseg": _version("mitoseg"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_src_modified": bool(_git("status", "--porcelain", "src")),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def print_header(title: str, info: dict, notes: Sequence[str] = ()) -> None:
    """The first lines a benchmark prints: what, where, with what, and a warning when the CPU is busy."""
    where = info.get("gpu") if str(info.get("device", "")).startswith("cuda") else info["cpu_model"]
    print(f"== {title}")
    print(f"   {info['date']}  device {info['device']} ({where}); {info['cpu_cores']} CPU cores, "
          f"{info['torch_threads']} torch threads; torch {info['torch']}, monai {info['monai']}")
    print(f"   command: {info['command']}")
    load = info["load_average_1_5_15_at_start"][0]
    if load > 0.5 * (info["cpu_cores_usable"] or 1):
        print(f"   WARNING: load average {load} at start: other processes use the CPU, timings will be slower")
    for note in notes:
        print(f"   note: {note}")
    sys.stdout.flush()


# ---------------------------------------------------------------- real data


@functools.cache
def load_stack() -> tuple[np.ndarray, np.ndarray]:
    """The real Drosophila VNC ssTEM stack 1: raw uint8 (20, 1024, 1024) and mitochondria mask uint8 {0, 1}
    (anti-aliased PNGs binarised > 127), through mitoseg's one loader (`mitoseg.datasets.drosophila`)."""
    from mitoseg import datasets
    from mitoseg.errors import MitosegError

    try:
        return datasets.drosophila(DROSO)
    except MitosegError as e:
        sys.exit(f"{e} (or set MITOSEG_DROSO to the drosophila-vnc-stack1 folder)")


def mirror_tile(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """`arr` cropped (from the origin) or mirror-tiled (symmetric padding after the end) to `shape`.

    Mirroring keeps structures continuous across the seams, so objects stay realistic in size.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != arr.ndim:
        raise ValueError(f"shape {shape} has {len(shape)} axes, the array {arr.ndim}")
    out = arr[tuple(slice(0, min(s, n)) for s, n in zip(shape, arr.shape, strict=True))]
    pads = [(0, max(0, s - n)) for s, n in zip(shape, out.shape, strict=True)]
    if any(p for _, p in pads):
        out = np.pad(out, pads, mode="symmetric")
    return np.ascontiguousarray(out)


def write_zarr(path: Path, arr: np.ndarray, chunks: Sequence[int]) -> Any:
    """Write `arr` to a new Zarr v3 array at `path` (default compression) and return it opened read-only."""
    import zarr

    z = zarr.create_array(str(path), shape=arr.shape, dtype=arr.dtype, chunks=tuple(chunks), overwrite=True)
    z[:] = arr
    return zarr.open_array(str(path), mode="r")


def parse_shape(text: str) -> tuple[int, ...]:
    """'20,512,512' -> (20, 512, 512)."""
    return tuple(int(v) for v in text.replace("x", ",").split(",") if v)


# ---------------------------------------------------------------- timing


def plain_conv3d(model: Any) -> Any:
    """A copy of a mitoseg model whose `models.Conv3d`s are plain `nn.Conv3d` (PyTorch's own kernel choice,
    as `train` ran until 2026-12-05's fourth session): the baseline of `models.Conv3d`."""
    import copy

    import torch

    from mitoseg.models import Conv3d

    model = copy.deepcopy(model)
    for module in model.modules():
        if type(module) is Conv3d:
            module.__class__ = torch.nn.Conv3d
    return model


def sync(device: Any) -> None:
    """Wait for queued GPU work, so perf_counter brackets what was asked (no-op on CPU)."""
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: Any = None) -> tuple[float, Any]:
    """(seconds, result) of one call of `fn`, by time.perf_counter, GPU synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - t0, result


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# ---------------------------------------------------------------- a measurement in a fresh process

RESULT = "RESULT "


def proc_status_kib(field: str) -> int:
    """A memory field (VmRSS, VmHWM, ...) of this process in KiB, from /proc/self/status (0 if absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def report(result: dict) -> None:
    """What a child process prints for `run_child`: one line of JSON after the RESULT marker."""
    print(RESULT + json.dumps(result), flush=True)


def run_child(script: str, spec: dict, timeout: float | None = None, crash_ok: bool = False) -> dict | None:
    """Run `script --child SPEC_JSON` in a fresh Python process and return the dict it `report`ed; None when it
    runs past `timeout` seconds (it is killed); exit with its output when it fails, but with `crash_ok` return
    {"crashed": its exit status} (negative: the signal that killed it)."""
    try:
        proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--child", json.dumps(spec)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT)]
    if (proc.returncode or not lines) and crash_ok:
        return {"crashed": proc.returncode}
    if proc.returncode or not lines:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT):])


# ---------------------------------------------------------------- output


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table of `rows`; columns are (key, header, format spec such as '.3f' or ',.0f')."""
    cells = [[h for _, h, _ in columns]]
    for row in rows:
        line = []
        for key, _, spec in columns:
            value = row.get(key)
            if value is None:
                line.append("-")
            elif isinstance(value, float | int | np.floating | np.integer) and not isinstance(value, bool):
                line.append(format(value, spec))
            else:
                line.append(str(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]

    def fmt(r: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths), *map(fmt, cells[1:])])


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def output_name(name: str, small: bool) -> str:
    """'predict' or 'predict_small': --small runs never overwrite the full-size results."""
    return f"{name}_small" if small else name


def save_json(out: Path, name: str, payload: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=True) + "\n")
    return path


def figure():
    """matplotlib.pyplot with the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def memory_bars(ax: Any, rows: Sequence[dict], labels: Sequence[str], fontsize: float | None = None) -> None:
    """Stacked bars on `ax`, one per row: its `baseline_rss_mib` (after imports, model and warm-up) under its
    `increment_mib` (what the measured work added), i.e. the peak resident memory in MiB."""
    x = np.arange(len(rows))
    ax.bar(x, [r["baseline_rss_mib"] for r in rows], color="lightgrey", label="baseline (torch + model)")
    ax.bar(x, [r["increment_mib"] for r in rows], bottom=[r["baseline_rss_mib"] for r in rows],
           label="increment while predicting")
    ax.set_xticks(x, labels, fontsize=fontsize)
    ax.set_ylabel("peak resident memory (MiB)")
    ax.legend(fontsize=7)


def save_figure(fig: Any, out: Path, name: str, info: dict) -> Path:
    """Save a figure as PNG with the machine and date in small print at the bottom."""
    where = info.get("gpu") if str(info.get("device", "")).startswith("cuda") else info["cpu_model"]
    fig.text(0.01, -0.04, f"{info['date']}  {where}, {info['cpu_cores']} cores, torch {info['torch']}",
             fontsize=6, color="grey", va="top")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path

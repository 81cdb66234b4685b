"""Machine and library description printed at the top of every harness and bench report."""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata

import psutil

LIBS = (
    "wsnursery",
    "trio",
    "trio-websocket",
    "wsproto",
    "websockets",
    "cbor2",
    "hdrhistogram",
    "psutil",
    "anyio",
    "attrs",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def lib_versions(names=LIBS) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def describe() -> dict:
    vm = psutil.virtual_memory()
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(vm.total / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "libraries": lib_versions(),
    }


def header_lines(info: dict) -> list[str]:
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items())
    return [
        f"CPU: {info['cpu_model']} — {info['logical_cpus']} logical CPUs ({info['physical_cores']} physical cores)",
        f"RAM: {info['ram_gib']} GiB — OS: {info['os']} — Python: {info['python']}",
        f"Load average at start: {' '.join(map(str, info['loadavg_at_start']))}",
        f"Libraries: {libs}",
    ]


def pin(pid: int, cpu: int) -> None:
    """Keep ``pid`` on one CPU (``cpu`` modulo the count); nothing where that is not possible."""
    try:
        os.sched_setaffinity(pid, {cpu % (os.cpu_count() or 1)})
    except (AttributeError, OSError):
        pass


def process_cpu(pid: int) -> float:
    """Seconds of CPU the process used: the scheduler's nanosecond count over its threads
    (Linux), else psutil's (10 ms ticks). Raises ``psutil.Error`` when the process is gone."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        times = psutil.Process(pid).cpu_times()
        return times.user + times.system

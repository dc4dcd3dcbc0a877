"""Where a result came from: the machine and the library versions, for reports, model cards and benchmarks.

Times (a selection's wall time and estimate, a benchmark's) mean little without the machine; a saved model's numbers
mean little without the versions that produced them (the Hub's cards list them as "Framework versions").
"""

from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["FRAMEWORKS", "framework_versions", "machine_description", "machine_text"]

FRAMEWORKS = ("hf_semscale", "transformers", "torch", "accelerate", "datasets", "tokenizers", "numpy")
"""The distributions whose versions a report records (those installed)."""


def framework_versions() -> dict[str, str]:
    """``{"python": "3.11.7", "hf_semscale": ..., "transformers": ..., ...}``: the installed ones of :data:`FRAMEWORKS`."""
    versions = {"python": platform.python_version()}
    for name in FRAMEWORKS:
        module = sys.modules.get(name)  # an imported module's own version names its build (torch's +cu130)
        try:
            versions[name] = str(getattr(module, "__version__", None) or metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
    return versions


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _accelerator() -> str:
    import torch

    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return ", ".join(f"{names.count(n)} x {n}" for n in dict.fromkeys(names))
    return "none"


def machine_description() -> dict[str, Any]:
    """The machine this process runs on: platform, CPU model and count, torch threads, GPUs ("none"), the load
    average (None where the OS has none) and :func:`framework_versions`."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "accelerator": _accelerator(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "versions": framework_versions(),
    }


def machine_text(machine: dict[str, Any]) -> str:
    """One line of :func:`machine_description`: ``"Intel Xeon ..., 2 CPUs, no GPU, torch 2.x (load 1.0)"``."""
    gpu = "no GPU" if machine["accelerator"] == "none" else machine["accelerator"]
    load = machine.get("load_average")
    text = f"{machine['processor']}, {machine['cpu_count']} CPUs, {gpu}, torch {machine['versions'].get('torch')}"
    return text + (f" (load average {load[0]:.2f})" if load else "")

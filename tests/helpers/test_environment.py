"""The machine and version record of reports, model cards, selections and benchmarks."""

from __future__ import annotations

import os
import platform

import torch
import transformers

from hf_semscale import environment
from hf_semscale.environment import framework_versions, machine_description, machine_text


def test_versions_are_the_running_builds_and_missing_ones_are_left_out(monkeypatch):
    monkeypatch.setattr(environment, "FRAMEWORKS", ("torch", "transformers", "hf_semscale", "no-such-distribution"))
    versions = framework_versions()
    assert versions["python"] == platform.python_version()
    assert versions["torch"] == torch.__version__ and versions["transformers"] == transformers.__version__
    assert versions["hf_semscale"]
    assert "no-such-distribution" not in versions


def test_machine_names_cpus_threads_and_no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    machine = machine_description()
    assert machine["cpu_count"] == os.cpu_count() and machine["torch_threads"] == torch.get_num_threads()
    assert machine["accelerator"] == "none" and machine["versions"]["torch"] == torch.__version__
    text = machine_text(machine)
    assert text.startswith(f"{machine['processor']}, {os.cpu_count()} CPUs, no GPU, torch {torch.__version__}")


def test_machine_counts_gpus_by_model(monkeypatch):
    names = ["NVIDIA H100", "NVIDIA H100", "NVIDIA A10"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(names))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: names[i])
    machine = machine_description()
    assert machine["accelerator"] == "2 x NVIDIA H100, 1 x NVIDIA A10"
    assert "CPUs, 2 x NVIDIA H100, 1 x NVIDIA A10, torch" in machine_text(machine)

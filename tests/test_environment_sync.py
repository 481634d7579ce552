"""pyproject.toml, environment.yml and constraints.txt agree (conda cannot run here: static check)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def _pip_list(env: dict) -> list[str]:
    lists = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    assert len(lists) == 1, "environment.yml needs exactly one pip: list"
    return [str(x).strip() for x in lists[0]]


def _pins(requirements: list[str]) -> dict[str, str]:
    """name -> version for `name==version` requirements (names normalised as in PEP 503)."""
    pins = {}
    for req in requirements:
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", req)
        if m:
            pins[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return pins


def test_python_version_agrees():
    requires = _pyproject()["project"]["requires-python"]
    minimum = re.fullmatch(r">=\s*(\d+\.\d+)", requires)
    assert minimum, f"unexpected requires-python {requires!r}"
    conda_python = [d for d in _environment()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert conda_python == [f"python={minimum.group(1)}"]


def test_torch_pin_matches_constraints():
    constraints = [
        line.strip() for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    torch = _pins(constraints)["torch"]
    assert _pins(_pip_list(_environment()))["torch"] == torch


def test_environment_repeats_pyproject_pins():
    project_pins = _pins(_pyproject()["project"]["dependencies"])
    env_pins = _pins(_pip_list(_environment()))
    env_pins.pop("torch")  # pinned through constraints.txt, open in pyproject
    assert env_pins == project_pins
    assert len(project_pins) == len(_pyproject()["project"]["dependencies"]) - 1  # all but torch pinned


def test_environment_installs_the_project_with_dev_extras():
    assert "-e .[dev]" in _pip_list(_environment())
    assert "dev" in _pyproject()["project"]["optional-dependencies"]
    assert _environment()["name"] == "repro"

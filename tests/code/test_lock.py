"""requirements.lock installs on a new machine: only `name==version` pins from the index, matching pyproject."""

from __future__ import annotations

import importlib.util
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.conftest import REPO

spec = importlib.util.spec_from_file_location("write_lock", REPO / "infra" / "write_lock.py")
write_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(write_lock)

LOCK_LINES = (REPO / "requirements.lock").read_text().splitlines()


def _locked() -> dict[str, str]:
    pins = [line.split("==") for line in LOCK_LINES if line.strip() and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_lock_holds_only_index_pins():
    assert write_lock.bad_lines(LOCK_LINES) == []


@pytest.mark.parametrize("line", [
    "httptools @ file:///tmp/uvw/httptools-0.9.0-cp311-cp311-manylinux1_x86_64.whl#sha256=b68f",
    "./wheels/uvloop-0.23.0-cp311-cp311-manylinux2014_x86_64.whl",
    "/opt/wheels/numpy-2.4.6.whl",
    "shoprec @ git+https://example.org/shoprec.git@main",
    "-e git+https://example.org/x.git#egg=x",
    "requests",
    "numpy>=2.4",
    "--find-links /opt/wheels",
])
def test_lock_check_rejects_what_a_new_machine_cannot_install(line):
    assert write_lock.bad_lines(["numpy==2.4.6", line]) == [line]


def test_lock_writer_drops_the_project_and_sorts():
    assert write_lock.pins("zzz==1.0\nshoprec==0.1.0\nAbc==2\n") == ["Abc==2", "zzz==1.0"]


def test_every_dependency_is_locked_within_its_range():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["dev"]
    locked = _locked()
    for text in requirements:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        assert name in locked, f"{req.name} is in pyproject.toml but not in requirements.lock"
        assert req.specifier.contains(locked[name], prereleases=True), f"{req.name}=={locked[name]} outside {req}"


def test_ci_runs_lint_and_tests():
    ci = (REPO / ".ci" / "run").read_text()
    assert "make lint" in ci and "make test" in ci

"""The conda environment in envs/ agrees with pyproject.toml and installs csmil itself."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
ENV_FILE = ROOT / "envs" / "csmil.yaml"
# Snakemake copies an environment file to <workdir>/.snakemake/conda/<hash>.yaml and conda
# resolves relative pip paths from there; the workflow runs with the repository as workdir.
CONDA_COPY_DIR = ROOT / ".snakemake" / "conda"


@pytest.fixture(scope="module")
def env():
    with open(ENV_FILE) as fh:
        return yaml.safe_load(fh)


@pytest.fixture(scope="module")
def project():
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def _split(env):
    """(conda specs, pip lines) of an environment file."""
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"unexpected dependency section {dep}"
            pip += dep["pip"]
        else:
            conda.append(dep)
    return conda, pip


def _pip_requirements(pip_lines):
    return {
        canonicalize_name(r.name): r
        for r in (Requirement(line) for line in pip_lines if not line.startswith("-"))
    }


def _options(pip_lines, flag):
    return [line.split(None, 1)[1] for line in pip_lines if line.split(None, 1)[0] == flag]


def test_every_rule_uses_the_environment():
    rules = sorted((ROOT / "rules").glob("*.smk"))
    texts = {p.name: p.read_text() for p in rules}
    n_rules = {n: len(re.findall(r"^(?:rule|checkpoint) \w+:", t, re.M)) for n, t in texts.items()}
    n_conda = {n: t.count('"../envs/csmil.yaml"') for n, t in texts.items()}
    assert n_rules == n_conda
    assert sum(n_rules.values()) > 0


def test_pip_section_is_pyproject_dependencies(env, project):
    _, pip = _split(env)
    declared = _pip_requirements(project["dependencies"])
    listed = _pip_requirements(pip)
    assert sorted(listed) == sorted(declared)
    for name, req in declared.items():
        assert listed[name].specifier == req.specifier, name
        assert listed[name].marker == req.marker, name


def test_python_version_is_allowed_by_pyproject(env, project):
    conda, _ = _split(env)
    pythons = [c for c in conda if re.match(r"python\b", c)]
    assert len(pythons) == 1, conda
    version = Version(re.sub(r"^python\s*=*\s*", "", pythons[0]).rstrip(".*"))
    assert version in SpecifierSet(project["requires-python"])
    assert "pip" in conda


def test_package_itself_is_installed_from_the_repository(env):
    _, pip = _split(env)
    editable = _options(pip, "-e")
    assert len(editable) == 1, pip
    target = (CONDA_COPY_DIR / editable[0]).resolve()
    assert target == ROOT
    assert (target / "pyproject.toml").exists()


def test_constraints_are_those_of_the_makefile(env):
    _, pip = _split(env)
    constraints = _options(pip, "-c")
    assert len(constraints) == 1, pip
    path = (CONDA_COPY_DIR / constraints[0]).resolve()
    assert path == ROOT / "constraints.txt" and path.exists()
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    pinned = {
        canonicalize_name(line.split("==")[0]): Version(line.split("==")[1])
        for line in path.read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    # Every dependency has a pin in constraints.txt and the pin satisfies pyproject.
    for name, req in _pip_requirements(pip).items():
        assert name in pinned, f"{name} has no pin in constraints.txt"
        assert pinned[name] in req.specifier, f"{name}=={pinned[name]} violates {req}"

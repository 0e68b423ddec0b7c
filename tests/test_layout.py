"""The library's layout: subpackages in pipeline order, imports only going down the pipeline.

Every ``csmil`` import in the source (top-level and inside functions) is read with ``ast``;
a module may import its own subpackage, the foundations and the stages before its own.
"""

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "csmil"

# Pipeline order: a stage may import only the foundations and the stages listed before it.
FOUNDATIONS = ("csmil", "csmil.io", "csmil.runtime", "csmil.config", "csmil.inputs")
STAGES = (
    "csmil.toy",
    "csmil.slides",
    "csmil.encoders",
    "csmil.mil",
    "csmil.evaluation",
    "csmil.reporting",
    "csmil.predict",
    "csmil.cli",
)
# What later stages may read of MIL training is what it wrote, through the format owners.
TRAINING_INTERNALS = ("csmil.mil.training",)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def csmil_imports(path: Path) -> set[str]:
    """Every csmil module ``path`` imports (``from csmil import X`` counts as ``csmil``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "csmil"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "csmil":
                out.add(node.module)
    return out


def stage_of(module: str) -> str | None:
    """The stage a module belongs to; None for a foundation."""
    for stage in STAGES:
        if module == stage or module.startswith(stage + "."):
            return stage
    if module in FOUNDATIONS:
        return None
    raise AssertionError(f"{module} belongs to no stage nor to the foundations; add it above")


MODULES = sorted(SRC.rglob("*.py"))


def test_every_module_has_a_place():
    for path in MODULES:
        stage_of(module_name(path))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_down_the_pipeline(path):
    me = module_name(path)
    my_stage = stage_of(me)
    rank = STAGES.index(my_stage) if my_stage else -1
    for imported in csmil_imports(path):
        other = stage_of(imported)
        if other is None or other == my_stage:
            continue
        assert STAGES.index(other) < rank, (
            f"{me} imports {imported}: {my_stage or 'a foundation'} may import only "
            f"{', '.join(STAGES[: max(rank, 0)]) or 'the foundations'}"
        )
        if my_stage != "csmil.mil":
            assert imported not in TRAINING_INTERNALS, (
                f"{me} imports {imported}: read what training wrote through csmil.mil.results, "
                "csmil.mil.splits or csmil.mil.methods instead"
            )


def test_layering_check_sees_an_upward_import(tmp_path):
    """The check reads imports inside functions too."""
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from csmil.reporting.tables import table1\n")
    assert csmil_imports(src) == {"csmil.reporting.tables"}
    assert stage_of("csmil.reporting.tables") == "csmil.reporting"

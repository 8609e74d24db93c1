"""dvc.yaml knows every input of every stage: the library code it runs, and the champion evaluate compares against.

A stage's code is what its ``shoprec <stage>`` command runs: the stage's function in ``pipelines/run.py`` and
every ``pipelines`` module it imports, directly or through other modules, including imports inside functions
(the stages import heavy modules lazily). Each of those files must be a dep, by file or by directory.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _module_file(module: str) -> Path | None:
    """The file a ``pipelines`` module is loaded from (a package's ``__init__.py``), or None if there is none."""
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(nodes: list[ast.stmt]) -> set[str]:
    """``pipelines`` modules imported anywhere in ``nodes`` (also inside functions), except typing-only imports."""
    found: set[str] = set()
    todo: list[ast.AST] = list(nodes)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse  # the body only runs under a type checker
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}  # submodules imported by name
        todo += ast.iter_child_nodes(node)
    return {name for name in found if name.split(".")[0] == "pipelines"}


def closure(modules: set[str]) -> set[Path]:
    """Every file executed when ``modules`` are imported: the modules, their packages and what they import."""
    seen: set[Path] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            path = _module_file(".".join(parts[:depth]))
            if path is not None and path not in seen:
                seen.add(path)
                todo += _imports(ast.parse(path.read_text()).body)
    return seen


def stage_code(stage: str) -> set[Path]:
    """The files ``shoprec <stage>`` runs: pipelines/run.py (its module-level imports and this stage's function,
    not the other stages' functions) and everything those import."""
    run = REPO / "pipelines" / "run.py"
    tree = ast.parse(run.read_text())
    stages_fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "stages")
    thunk = next(n for n in stages_fn.body if isinstance(n, ast.FunctionDef) and n.name == stage)
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom | ast.If)]
    return {run} | closure({"pipelines"} | _imports(top) | _imports(thunk.body))


def runs_code(path: Path) -> bool:
    """False for a file that is at most a docstring (an empty package ``__init__``): nothing there can change."""
    body = ast.parse(path.read_text()).body
    return not all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body)


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO)
    return any(rel == Path(dep) or Path(dep) in rel.parents for dep in deps)


def dep_paths(stage: str) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else d for d in DVC[stage].get("deps", [])]


@pytest.mark.parametrize("stage", list(DVC))
def test_every_module_a_stage_runs_is_a_dep(stage: str):
    assert DVC[stage]["cmd"].split() == ["shoprec", stage]
    deps = dep_paths(stage)
    missing = sorted(str(p.relative_to(REPO)) for p in stage_code(stage) if runs_code(p) and not covered(p, deps))
    assert missing == [], f"{stage} runs these but dvc.yaml does not list them"
    assert all((REPO / dep).exists() or not dep.startswith("pipelines") for dep in deps)


def test_the_check_sees_lazy_imports():
    """The train stage imports the deep models and rankers inside functions; the closure must still reach them."""
    code = {str(p.relative_to(REPO)) for p in stage_code("train")}
    assert {"pipelines/models/sasrec.py", "pipelines/rankers/lightgbm_ranker.py", "pipelines/core/config.py",
            "pipelines/run.py"} <= code


def test_evaluate_depends_on_the_recorded_champion():
    """The champion evaluate compares against lives in the registry, which DVC cannot see: the champion stage
    records it in models/champion.json, promote/rollback rewrite that file, and evaluate depends on it."""
    assert "models/champion.json" in dep_paths("evaluate")
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in DVC["champion"]["outs"]]
    assert outs == ["models/champion.json"]
    assert "models/candidate" in dep_paths("champion")
    order = list(DVC)
    assert order.index("train") < order.index("champion") < order.index("evaluate")


def test_every_params_section_is_a_stage_param():
    from pipelines.core.config import Params

    listed = {p.split(".")[0] for stage in DVC.values() for p in stage.get("params", [])}
    online = {"experiment"}  # read by `shoprec experiment decide` on live traffic, never by a pipeline stage
    assert {field.alias or name for name, field in Params.model_fields.items()} - online <= listed

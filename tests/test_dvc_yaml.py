"""dvc.yaml's deps are complete: every project file a stage's code imports is listed, so a
change to it re-runs the stage (and `dvc repro` never calls stale results up to date)."""

import ast
from pathlib import Path

import pytest
import yaml
from conftest import REPO, STAGES

PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def run_time_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of `tree` but those under `if TYPE_CHECKING:`, which never run: a module
    imported only for type hints is not one the stage's results depend on."""
    found, todo = [], [tree]
    while todo:
        node = todo.pop()
        found.append(node)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            todo.extend(node.orelse)
        else:
            todo.extend(ast.iter_child_nodes(node))
    return found


def imported_files(path: Path) -> set[str]:
    """The project's files (relative to the repository) that `path` imports directly, when
    it runs."""
    found = set()
    for node in run_time_nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for module in modules:
            file = Path(*module.split(".")).with_suffix(".py")
            package = Path(*module.split(".")) / "__init__.py"
            if module.split(".")[0] != "spamgpt":
                continue
            if (REPO / file).exists():
                found.add(file.as_posix())
            elif (REPO / package).exists() and module == node_module(node):
                found.add(package.as_posix())
    return found


def test_imports_for_type_hints_only_are_not_followed() -> None:
    # results.py names the training loop's types; evaluate imports results, never the loop
    assert "spamgpt/finetune/train.py" not in imported_files(REPO / "spamgpt/evaluate/results.py")
    assert "spamgpt/finetune/train.py" not in closure("stages/evaluate.py")
    assert "spamgpt/finetune/train.py" in closure("stages/finetune.py")


def node_module(node: ast.AST) -> str | None:
    return getattr(node, "module", None)


# Files a module hands to another program by path rather than importing them.
USED_BY_PATH = {
    "spamgpt/serve/serving.py": {"spamgpt/serve/mlflow_model.py"}
}  # the MLflow model's code


def closure(script: str) -> set[str]:
    """`script` and every project file it imports (or uses by path), directly or through
    others."""
    seen, todo = set(), [script]
    while todo:
        file = todo.pop()
        if file not in seen:
            seen.add(file)
            todo.extend(imported_files(REPO / file) | USED_BY_PATH.get(file, set()))
    return seen


def test_the_import_walk_sees_through_modules() -> None:
    # download_data's script calls spamgpt.data.download, which does its work with spamgpt.atomic
    files = closure("stages/download_data.py")
    assert {"spamgpt/data/download.py", "spamgpt/atomic.py", "spamgpt/errors.py"} <= files


@pytest.mark.parametrize("name", STAGES)
def test_every_project_file_a_stage_imports_is_a_dep(name: str) -> None:
    stage = PIPELINE[name]
    script = stage["cmd"].split()[-1]
    deps = set(stage["deps"])
    missing = sorted(closure(script) - deps)
    assert not missing, f"dvc.yaml stage {name} does not list {missing} in its deps"


@pytest.mark.parametrize("name", STAGES)
def test_no_stage_lists_a_module_it_does_not_use(name: str) -> None:
    stage = PIPELINE[name]
    listed = {d for d in stage["deps"] if d.startswith(("spamgpt/", "stages/"))}
    unused = sorted(listed - closure(stage["cmd"].split()[-1]))
    assert not unused, f"dvc.yaml stage {name} lists {unused}, which its code does not import"


def test_dvc_never_deletes_an_output_before_its_stage_runs() -> None:
    """`persist: true` on every output: each stage replaces its own (spamgpt.atomic), so one
    that fails leaves the last good outputs; DVC would delete them first otherwise."""
    for name, stage in PIPELINE.items():
        for kind in ("outs", "metrics", "plots"):
            for out in stage.get(kind, []):
                path, options = next(iter(out.items())) if isinstance(out, dict) else (out, {})
                assert options.get("persist") is True, f"{name}: {path}"

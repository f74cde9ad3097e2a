"""dvc.yaml against the code: every file a stage runs is a dependency, and every output the
stage writes (pipeline.layout) is declared, so `dvc repro` never calls a stale stage fresh."""

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import layout

ROOT = Path(__file__).resolve().parents[2]
PHASE_STAGES = ("finetune_real", "quantize", "evaluate")
STAGES = ["synthesize", "sim_to_real", "split", "train_teacher", "distill_student",
          *PHASE_STAGES]


def _dvc_stage(name: str) -> dict:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return stages[name].get("do", stages[name])


def _module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    """pipeline.* modules imported by a file: anywhere in it (lazy imports in functions
    included), or only at module level."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}  # submodule imports
    return {m for m in found if m == "pipeline" or m.startswith("pipeline.")}


def _imported_files(stage: str) -> set[str]:
    """Project files `python -m pipeline <stage>` can run: the stage module and everything it
    imports, transitively, with each package's __init__; from __main__ its module-level
    imports and the config loader (its other lazy imports belong to other commands)."""
    todo = {f"pipeline.stages.{stage}", "pipeline.config",
            *_imports(ROOT / "pipeline/__main__.py", top_level_only=True)}
    files = {ROOT / "pipeline/__main__.py"}
    seen = set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        todo |= {".".join(parts[:i]) for i in range(1, len(parts))}
        path = _module_file(module)
        if path is not None and path not in files:
            files.add(path)
            todo |= _imports(path)
    return {f.relative_to(ROOT).as_posix() for f in files}


def _code_deps(stage: str) -> list[str]:
    return [d for d in _dvc_stage(stage)["deps"] if d.startswith("pipeline")]


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", STAGES)
def test_every_module_a_stage_imports_is_a_dependency(stage):
    deps = _code_deps(stage)
    missing = sorted(f for f in _imported_files(stage) if not _covered(f, deps))
    assert not missing, f"dvc.yaml stage {stage} misses deps {missing}"


@pytest.mark.parametrize("stage", STAGES)
def test_no_code_dependency_the_stage_does_not_run(stage):
    imported = _imported_files(stage)
    unused = [d for d in _code_deps(stage) if not any(_covered(f, [d]) for f in imported)]
    assert not unused, f"dvc.yaml stage {stage} depends on code it never imports: {unused}"


def _declared(entries: list) -> list[str]:
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries]


@pytest.mark.parametrize("stage", STAGES)
def test_outputs_match_the_layout(stage):
    spec = _dvc_stage(stage)
    if stage in PHASE_STAGES:  # dvc.yaml's foreach variable stands for the phase
        expected = layout.stage_outputs(stage, "${key}" if stage == "evaluate" else "${item}")
    else:
        expected = layout.stage_outputs(stage)
    for kind in ("outs", "metrics", "plots"):
        assert sorted(_declared(spec.get(kind, []))) == sorted(p.as_posix()
                                                               for p in expected[kind])

"""The layout rules: imports flow CLI -> methods -> models / diffusion / data -> config / utils, and utils/ are leaves."""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = {"main", "config", "dataset", "data", "methods", "models", "diffusion", "schedulers", "utils", "preflight",
           "pre_training_checklist", "verify_training_ready"}
# layer -> project modules it must never import (directly or inside a function)
FORBIDDEN = {
    "utils": PROJECT - {"utils"},
    "config": PROJECT - {"config", "utils"},
    "schedulers": PROJECT - {"schedulers", "config", "utils"},
    "diffusion": PROJECT - {"diffusion", "schedulers", "config", "utils"},
    "models": PROJECT - {"models", "config", "utils"},
    "dataset": PROJECT - {"dataset", "data", "config", "utils"},
    "data": PROJECT - {"data", "config", "utils"},
    "methods": {"main", "preflight", "pre_training_checklist", "verify_training_ready"},
}


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def layer_of(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def edges_against_the_flow(files) -> list[str]:
    bad = []
    for path in files:
        forbidden = FORBIDDEN.get(layer_of(path), set())
        for line, module in imported_modules(path):
            if module.split(".")[0] in forbidden:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return bad


def test_imports_flow_one_way():
    files = [p for p in ROOT.rglob("*.py") if not {"tests", "benchmarks", ".git"} & set(p.relative_to(ROOT).parts)]
    assert len(files) > 30
    assert edges_against_the_flow(files) == []


def test_the_flow_check_sees_a_wrong_edge(tmp_path, monkeypatch):
    (tmp_path / "utils").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "utils" / "leaf.py").write_text("def f():\n    from dataset import SignDataset\n")
    (tmp_path / "models" / "net.py").write_text("import torch\nfrom methods.sampling import generate\n")
    (tmp_path / "config.py").write_text("from models import MODELS\nfrom utils.errors import UserError\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    files = sorted(tmp_path.rglob("*.py"))
    assert edges_against_the_flow(files) == ["config.py:1 imports models", "models/net.py:2 imports methods.sampling",
                                             "utils/leaf.py:2 imports dataset"]

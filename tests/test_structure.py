"""The layout rules: imports flow CLI -> methods -> models / diffusion / data -> config / utils, and utils/ are leaves.

Inside methods/, the sub-packages are by purpose (training, sharing, data_prep, evaluation) and stand side by side:
none imports another. What they share sits at methods/ itself: run_config, checkpoint and sampling (the core, which
imports no sub-package) and pipeline (loading a model to sample from: the core plus the export format it reads).
"""
import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PROJECT = {"main", "config", "dataset", "data", "methods", "models", "diffusion", "schedulers", "utils",
           "pre_training_checklist", "verify_training_ready"}
CLI = {"main", "pre_training_checklist", "verify_training_ready"}
SUBPACKAGES = {"methods.training", "methods.sharing", "methods.data_prep", "methods.evaluation"}
# layer -> project modules (or dotted module prefixes) it must never import, directly or inside a function
FORBIDDEN = {
    "utils": PROJECT - {"utils"},
    "config": PROJECT - {"config", "utils"},
    "schedulers": PROJECT - {"schedulers", "config", "utils"},
    "diffusion": PROJECT - {"diffusion", "schedulers", "config", "utils"},
    "models": PROJECT - {"models", "config", "utils"},
    "dataset": PROJECT - {"dataset", "data", "config", "utils"},
    "data": PROJECT - {"data", "config", "utils"},
    "methods": CLI | SUBPACKAGES | {"methods.pipeline"},  # the core: run_config, checkpoint, sampling
    "methods.pipeline": CLI | SUBPACKAGES - {"methods.sharing"} | {"methods.sharing.export", "methods.sharing.serve"},
    **{sub: CLI | SUBPACKAGES - {sub} for sub in SUBPACKAGES - {"methods.data_prep"}},
    "methods.data_prep": CLI | SUBPACKAGES - {"methods.data_prep"} | {"methods.pipeline"},
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
    """The rule a file answers to: its top-level package, a methods/ sub-package, or methods.pipeline."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    if len(parts) == 1:
        return parts[0]
    if parts[0] == "methods" and len(parts) > 2:
        return f"methods.{parts[1]}"
    if parts[:2] == ("methods", "pipeline"):
        return "methods.pipeline"
    return parts[0]


def forbids(rules: set[str], module: str) -> bool:
    return any(module == rule or module.startswith(rule + ".") for rule in rules)


def edges_against_the_flow(files) -> list[str]:
    bad = []
    for path in files:
        rules = FORBIDDEN.get(layer_of(path), set())
        for line, module in imported_modules(path):
            if forbids(rules, module):
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
    for sub in ("training", "sharing", "data_prep"):
        (tmp_path / "methods" / sub).mkdir(parents=True)
    (tmp_path / "methods" / "training" / "trainer.py").write_text(
        "from methods.pipeline import SignPipeline\nfrom methods.sharing.export import export\n")
    (tmp_path / "methods" / "sharing" / "serve.py").write_text("from methods.training.experiment import x\n")
    (tmp_path / "methods" / "data_prep" / "stats.py").write_text("from methods.run_config import load_config\n"
                                                                 "from methods.pipeline import SignPipeline\n")
    (tmp_path / "methods" / "sampling.py").write_text("from methods.sharing.export_format import read_export\n")
    (tmp_path / "methods" / "pipeline.py").write_text("from methods.sharing.export_format import read_export\n"
                                                      "from methods.sharing.serve import serve\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    files = sorted(tmp_path.rglob("*.py"))
    assert edges_against_the_flow(files) == [
        "config.py:1 imports models", "methods/data_prep/stats.py:2 imports methods.pipeline",
        "methods/pipeline.py:2 imports methods.sharing.serve", "methods/sampling.py:1 imports methods.sharing.export_format",
        "methods/sharing/serve.py:1 imports methods.training.experiment",
        "methods/training/trainer.py:2 imports methods.sharing.export", "models/net.py:2 imports methods.sampling",
        "utils/leaf.py:2 imports dataset"]

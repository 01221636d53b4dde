"""Dependencies point one way (DESIGN.md §2): the component packages import none of each other
(students may use kernels) and of the glue only its leaf modules, which import nothing else."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Glue modules every package may import: they import nothing of the toolkit but each other.
LEAVES = {"dass_distill.errors", "dass_distill.frontend", "dass_distill.checkpoint_files", "dass_distill.registry"}
COMPONENTS = {"teachers": set(), "students": {"kernels"}, "kernels": set(), "logit_cache": set()}


def toolkit_imports(path: Path) -> set[str]:
    """Absolute ``dass_distill...`` modules a file imports (relative imports stay inside its package)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("dass_distill"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("dass_distill")}
    return out


@pytest.mark.parametrize("package", sorted(COMPONENTS))
def test_components_import_only_leaves_and_allowed_packages(package):
    allowed = LEAVES | {f"dass_distill.{package}"} | {f"dass_distill.{p}" for p in COMPONENTS[package]}
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in toolkit_imports(path):
            if not any(module == a or module.startswith(a + ".") for a in allowed):
                bad.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not bad, bad


def test_leaf_modules_import_only_each_other():
    for leaf in LEAVES:
        path = ROOT / (leaf.replace("dass_distill.", "dass_distill/") + ".py")
        assert toolkit_imports(path) <= LEAVES, (leaf, toolkit_imports(path) - LEAVES)

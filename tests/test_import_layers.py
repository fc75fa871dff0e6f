"""Imports point one way: every `jaxbiqa` module sits in a layer and imports only from its own layer
or those below it (README, Layout). Function-level imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxbiqa"

# lowest first; a module belongs to the first layer with a prefix that matches it
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("config", ("jaxbiqa.config",)),
    ("infra", ("jaxbiqa.sharding", "jaxbiqa.distributed", "jaxbiqa.checkpoint", "jaxbiqa.paths",
               "jaxbiqa.interrupts")),
    ("models", ("jaxbiqa.models",)),
    ("processing, data", ("jaxbiqa.prompts", "jaxbiqa.parse", "jaxbiqa.processing", "jaxbiqa.data", "jaxbiqa.models.build")),
    ("rollout", ("jaxbiqa.rollout",)),
    ("rewards", ("jaxbiqa.rewards",)),
    ("rl, sft", ("jaxbiqa.rl.losses", "jaxbiqa.rl.step", "jaxbiqa.rl.batches", "jaxbiqa.rl.references",
                 "jaxbiqa.rl.metrics_log", "jaxbiqa.rl", "jaxbiqa.sft")),
    ("eval", ("jaxbiqa.eval",)),
    ("train loop", ("jaxbiqa.rl.trainer",)),
    ("cli, demo", ("jaxbiqa.cli", "jaxbiqa.config_cmd", "jaxbiqa.plan", "jaxbiqa.demo", "jaxbiqa.demo_assets")),
]
CLI_SUFFIX = "_cmd"  # every command module is in the top layer, wherever it lives
TOP = len(LAYERS) - 1


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    if module == "jaxbiqa":  # the package itself: its version only
        return 1
    if module.rsplit(".", 1)[-1].endswith(CLI_SUFFIX):
        return TOP
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS (and README's Layout)")
    return best[0]


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("jaxbiqa"):
            found.add(node.module)
            # `from jaxbiqa.rl import trainer` imports the submodule
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (PACKAGE.parent / (node.module.replace(".", "/") + f"/{a.name}.py")).is_file())
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("jaxbiqa"))
    return found


def test_imports_point_down():
    upward = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = module_name(path)
        for imported in imports_of(path):
            if layer_of(imported) > layer_of(importer):
                upward.add((importer, imported))
    assert not upward, "imports that point up a layer: " + "; ".join(
        f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})" for a, b in sorted(upward))


def test_config_is_a_leaf():
    assert not imports_of(PACKAGE / "config.py"), "jaxbiqa.config imports no other jaxbiqa module"


def test_every_module_has_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))


def test_readme_lists_the_layers_in_order():
    readme = (PACKAGE.parent / "README.md").read_text()
    section = readme[readme.index("## Layout"):]
    rows = [line.split("|")[1].strip() for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| layer")]
    assert rows == [name for name, _ in LAYERS]

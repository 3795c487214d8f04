"""The layers of ARCHITECTURE.md, enforced: a module imports only from its own layer or the layers below it.

Every module of src/aiayn (package __init__ files included) has a layer, found by its longest prefix in LAYERS;
every import counts, also those inside functions (lazy imports), so a layer cannot hide an upward import.
Also the size rules: no module over 400 lines, no function over 60.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "aiayn"

# Longest matching prefix wins. See ARCHITECTURE.md, "Layers".
LAYERS = {
    "aiayn.config": 1,
    "aiayn.errors": 1,
    "aiayn.files": 1,
    "aiayn.tokenizer": 2,
    "aiayn.tokenizer_pretrained": 2,
    "aiayn.tokenizer_spm_train": 2,
    "aiayn.tokenizer_train": 2,
    "aiayn.tokenizer_moses": 2,
    "aiayn.model": 2,
    "aiayn.data": 3,
    "aiayn.decoding": 3,
    "aiayn.modelfile": 3,
    "aiayn.modelfile_checks": 3,
    "aiayn.scoring": 3,
    "aiayn.evaluate": 3,
    "aiayn.devices": 3,
    "aiayn.machine": 3,
    "aiayn.train": 4,
    "aiayn.inference": 4,
    "aiayn.interop": 4,
    "aiayn.viz": 5,
    "aiayn.viz_curves": 5,
    "aiayn.explain": 5,
    "aiayn.explain_rnn": 5,
    "aiayn.report_html": 5,
    "aiayn.serve": 5,
    "aiayn.demo": 5,
    "aiayn.commands": 6,
    "aiayn.cli": 6,
    "aiayn.__main__": 6,
    "aiayn": 6,  # the package itself: `aiayn.load` reaches inference
}

# Upward imports that exist on purpose, each with its reason. Keep this list short.
ALLOWED = {
    # Old public names kept working: aiayn.model.compile_decoding / inference_layout moved to the inference layer
    # (compile and weight layout are inference's policy); model/__init__ forwards them lazily (__getattr__).
    ("aiayn.model", "aiayn.inference"),
}

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = ["aiayn", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(name: str) -> int | None:
    matches = [prefix for prefix in LAYERS if name == prefix or name.startswith(prefix + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def imports(text: str, name: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, imported aiayn module) for every import statement in the source `text` of module `name`, at any
    depth (imports inside functions count)."""
    found = []
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "aiayn"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, level - 1 steps up
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == "aiayn":
                # `from aiayn import viz` imports the module aiayn.viz; `from aiayn.x import y` imports aiayn.x.
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    found.append((node.lineno, sub if sub in MODULES else base))
    return found


FILES = sorted(SRC.rglob("*.py"))
MODULES = {module_name(p) for p in FILES}


def test_every_module_has_a_layer():
    assert [m for m in sorted(MODULES) if layer(m) is None] == []


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_from_a_layer_above_it(path):
    name = module_name(path)
    own = layer(name)
    upward = [
        f"{path.relative_to(SRC)}:{line} imports {target} (layer {layer(target)}) from layer {own}"
        for line, target in imports(path.read_text(encoding="utf-8"), name, path.name == "__init__.py")
        if (layer(target) or 0) > own and not any(name.startswith(a) and target.startswith(b) for a, b in ALLOWED)
    ]
    assert upward == []


def test_the_checker_sees_lazy_and_relative_imports():
    # A function-level import counts: otherwise a layer could hide its upward imports.
    text = "def f():\n    from aiayn.train import trainer\n    import aiayn.cli\n    from ..decoding import search\n"
    found = [target for _, target in imports(text, "aiayn.model.masks")]
    assert found == ["aiayn.train.trainer", "aiayn.cli", "aiayn.decoding.search"]
    assert layer("aiayn.model.masks") == 2 and layer("aiayn.train.trainer") == 4 and layer("aiayn") == 6


def test_modules_and_functions_are_small():
    too_long = []
    for path in FILES:
        text = path.read_text(encoding="utf-8")
        rel = path.relative_to(SRC)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{rel}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    too_long.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert too_long == []

"""The package map is the architecture: the layer rule holds (import-linter, `.importlinter`),
and no module grows past a screen of scrolling."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
LAYOUT_BUILDERS = ("build_",)  # Gradio layout builders list components; they may run longer


def test_the_import_contracts_hold():
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "0 broken" in out.stdout


def _modules():
    return sorted((ROOT / "blsp_demo").rglob("*.py"))


def test_modules_fit_a_screen_of_scrolling():
    long = {str(p.relative_to(ROOT)): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_functions_are_short():
    long = {}
    for p in _modules():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith(LAYOUT_BUILDERS):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{p.relative_to(ROOT)}:{node.name}"] = n
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_serving_a_gguf_imports_no_transformers_modeling_code():
    """The engine, its loader and llama.cpp runtime, Whisper's loader and the prompt planner import
    without transformers' modeling code (which brings torch._dynamo and sympy, ~0.2 GB of resident
    memory): the default cascade on llama.cpp never needs it. BLSP and LLaSM models import it where
    they are loaded."""
    code = ("import sys, blsp_demo.engine, blsp_demo.engine.llamacpp, blsp_demo.engine.asr, blsp_demo.engine.llama_vocab;"
            "print(sorted(m for m in ('transformers.modeling_utils', 'torch._dynamo', 'blsp_demo.model.blsp',"
            " 'blsp_demo.model.llasm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"

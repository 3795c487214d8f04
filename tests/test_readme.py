"""The README's Python examples run as written (kept true by this test)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.DOTALL)


def test_readme_build_and_run_example(capsys):
    blocks = [b for b in python_blocks() if "Transformer(config)" in b]
    assert len(blocks) == 1
    exec(compile(blocks[0], "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "63,082,496 parameters" in out
    assert "torch.Size([2, 8, 3, 5])" in out


def test_readme_states_the_commands_ci_runs():
    text = README.read_text(encoding="utf-8")
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert 'pip install -e ".[dev]" && python -m pytest' in text
    assert "pip install -e . && aiayn demo" in text  # the main job (run shortened in tests/test_cli_demo.py)
    assert 'pip install --quiet -e ".[dev]"' in ci and "python -m pytest" in ci


def test_reverse_example_runs_and_reports_its_accuracy():
    """examples/reverse_task.py, shortened (the full 400 steps reverse 500/500, as the README says)."""
    import subprocess
    import sys

    script = README.parent / "examples" / "reverse_task.py"
    result = subprocess.run(
        [sys.executable, str(script), "--steps", "50"], capture_output=True, text=True, timeout=600, check=True
    )
    lines = result.stdout.splitlines()
    assert lines[0].startswith("model: ") and "parameters" in lines[0]
    assert lines[1].startswith("step   50  loss ")
    assert re.fullmatch(r"exact reversals on 500 new sequences: \d+/500", lines[-1])

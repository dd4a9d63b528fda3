"""The house's layers hold: import-linter's contracts in pyproject.toml (the
layer order of docs/architecture.md, no import cycle between the files of a
package), and imports sit at the top of files.

Runs in: the pytest process.
"""
import ast

from importlinter.cli import lint_imports

from tests.helpers import REPO_ROOT

PACKAGES = ("asyncd", "shm", "workers", "bench")


def test_import_linter_contracts_are_kept(monkeypatch, capsys):
    monkeypatch.chdir(REPO_ROOT)
    rc = lint_imports(config_filename=str(REPO_ROOT / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 broken" in out


def _function_imports(path):
    tree = ast.parse(path.read_text(), str(path))
    lines = path.read_text().splitlines()
    for fn in ast.walk(tree):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                # the reason may sit on the line itself or on the comment line(s) just above
                above = lines[max(0, node.lineno - 3):node.lineno - 1]
                here = lines[node.lineno - 1]
                if "#" not in here and not any(a.strip().startswith("#") for a in above):
                    yield f"{path.relative_to(REPO_ROOT)}:{node.lineno}: {here.strip()}"


def test_imports_inside_functions_say_why():
    """An import inside a function is for an optional dependency or has a
    documented reason (a comment on it or just above); anything else belongs
    at the top of the file, and a circle it would break means a piece belongs
    one layer down."""
    found = [hit for pkg in PACKAGES for p in sorted((REPO_ROOT / pkg).rglob("*.py"))
             for hit in _function_imports(p)]
    assert found == [], "\n".join(found)

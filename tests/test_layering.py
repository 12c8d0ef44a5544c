"""Rules of the package's layers, checked on its source: who imports what, what errors say."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import carbongeo

PACKAGE = Path(carbongeo.__file__).parent
# A command to run, quoted in a message ("run: carbongeo tile --year 2014"), may hold flags.
_COMMAND = re.compile(r"carbongeo [a-z]+(?: [^;)']*)?")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _modules(folder: Path) -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(folder.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _library() -> Iterator[tuple[Path, ast.Module]]:
    for path, tree in _modules(PACKAGE):
        if "cli" not in path.relative_to(PACKAGE).parts:
            yield path, tree


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _text(node: ast.AST) -> str:
    """The literal text of a string or f-string expression (placeholders dropped)."""
    parts = [n.value for n in ast.walk(node) if isinstance(n, ast.Constant)]
    return "".join(p for p in parts if isinstance(p, str))


def _raised(tree: ast.Module) -> Iterator[tuple[int, str, str]]:
    """(line, class name, message text) of every ``raise SomeError(...)``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            args = [*node.exc.args, *(k.value for k in node.exc.keywords)]
            yield node.lineno, name, " ".join(_text(a) for a in args)


def test_io_does_not_depend_on_the_config_or_the_stages() -> None:
    for path, tree in _modules(PACKAGE / "io"):
        bad = {m for m in _imported(tree) if m.startswith(("carbongeo.config", "carbongeo.stages"))}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_library_raises_name_a_subclass() -> None:
    bare = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path, tree in _library()
        for line, name, _ in _raised(tree)
        if name == "CarbongeoError"
    ]
    assert bare == []


def test_library_errors_do_not_name_flags() -> None:
    flagged = []
    for path, tree in _library():
        for line, _, message in _raised(tree):
            flags = _FLAG.findall(_COMMAND.sub("", message))
            if flags:
                flagged.append(f"{path.relative_to(PACKAGE)}:{line}: {flags}")
    assert flagged == []


def test_the_flag_rule_sees_flags() -> None:
    """The two rules above would pass on an empty package; they must catch a real offender."""
    tree = ast.parse(
        'raise CarbongeoError(f"--batch-size: must be >= 1, got {n}")\n'
        'raise MissingRunFileError(f"no cubes; run: carbongeo tile --year {year}")\n'
    )
    found = [(name, _FLAG.findall(_COMMAND.sub("", text))) for _, name, text in _raised(tree)]
    assert found == [("CarbongeoError", ["--batch-size"]), ("MissingRunFileError", [])]

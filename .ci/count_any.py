#!/usr/bin/env python3
"""How many times imd/ says ``Any`` (typing.Any) in its code: every use as a
name or attribute (``Any``, ``typing.Any``), in annotations and in
expressions, string annotations ("Optional[Any]") included; the import lines
are not counted.  Prints ``Any in imd/: N (ceiling C)``; exits 1 when N is
above the ceiling recorded in .ci/any-ceiling.  The count only goes down:
when it falls, lower the ceiling to it in the same commit.

    .venv/bin/python .ci/count_any.py [--ceiling FILE] [PATH ...]
"""

import argparse
import ast
import os
import sys
from typing import Iterable, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _annotations(tree: ast.AST) -> Iterable[ast.AST]:
    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and node.annotation is not None:
            yield node.annotation
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def _uses(tree: ast.AST) -> int:
    count = sum(1 for node in ast.walk(tree)
                if isinstance(node, ast.Name) and node.id == "Any"
                or isinstance(node, ast.Attribute) and node.attr == "Any")
    # string annotations ("Optional[Any]"), and only those: a string "Any" elsewhere is text
    for annotation in _annotations(tree):
        for node in ast.walk(annotation):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "Any" in node.value:
                try:
                    count += _uses(ast.parse(node.value, mode="eval"))
                except SyntaxError:
                    pass
    return count


def count_source(source: str, filename: str = "<source>") -> int:
    """``Any`` used in one module's source."""
    return _uses(ast.parse(source, filename))


def python_files(paths: Iterable[str]) -> List[str]:
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        for folder, _, files in os.walk(path):
            found.extend(os.path.join(folder, name) for name in files if name.endswith(".py"))
    return sorted(found)


def count_paths(paths: Iterable[str]) -> int:
    total = 0
    for path in python_files(paths):
        with open(path, encoding="utf-8") as f:
            total += count_source(f.read(), path)
    return total


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description="Count typing.Any in imd/ against a ceiling.")
    parser.add_argument("--ceiling", default=os.path.join(HERE, "any-ceiling"))
    parser.add_argument("paths", nargs="*", default=[os.path.join(ROOT, "imd")])
    args = parser.parse_args(argv)
    with open(args.ceiling, encoding="utf-8") as f:
        ceiling = int(f.read().split()[0])
    count = count_paths(args.paths)
    print("Any in imd/: %d (ceiling %d)" % (count, ceiling))
    if count > ceiling:
        print("count_any: %d uses of Any, more than the ceiling of %d (%s): type the new code"
              % (count, ceiling, os.path.relpath(args.ceiling, ROOT)), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

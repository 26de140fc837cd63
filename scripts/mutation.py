"""Mutation score of one module: flip one operator at a time, run its tests, count the kills.

    python scripts/mutation.py housing_mlops/promote.py tests/test_promote.py \
        [--functions should_promote,_best] [--pytest-args "-k gate"] [--timeout 300]

Each mutant changes one operator in the module (a comparison: < <= > >= == != is in and
their opposites; `and`/`or`; dropping a `not`; True/False; + and -), in the listed
functions or the whole module. The mutant is written to a copy of the package that comes
first on PYTHONPATH, and the given tests run against it (`pytest -x`): a failing run kills
the mutant, a passing one means no test noticed the change. Survivors are listed with
their line, so each one is a missing test or an operator that does not matter. Prints the
score; exits 0 (a report, not a gate: `make mutation`, outside `make test`).

mutmut would do the same with more operators, but needs its own runner set-up for this
layout; single-operator flips are what the rule modules' boundaries need.
"""

from __future__ import annotations

import argparse
import ast
import copy
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = "housing_mlops"

COMPARE_SWAPS: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
}
BINOP_SWAPS: dict[type[ast.operator], type[ast.operator]] = {ast.Add: ast.Sub, ast.Sub: ast.Add}
SYMBOL = {
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Is: "is",
    ast.IsNot: "is not",
    ast.In: "in",
    ast.NotIn: "not in",
    ast.And: "and",
    ast.Or: "or",
    ast.Add: "+",
    ast.Sub: "-",
}


@dataclass(frozen=True)
class Mutant:
    index: int  # position of the node in ast.walk order
    part: int  # which operator of a chained comparison
    line: int
    description: str


def _in_functions(tree: ast.Module, names: set[str] | None) -> set[int]:
    """ids of the nodes inside the selected functions (every node when names is None)."""
    if names is None:
        return {id(n) for n in ast.walk(tree)}
    found: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in names:
            found.update(id(n) for n in ast.walk(node))
    return found


def find_mutants(tree: ast.Module, functions: set[str] | None) -> list[Mutant]:
    selected = _in_functions(tree, functions)
    mutants: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) not in selected:
            continue
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Compare):
            for part, op in enumerate(node.ops):
                if type(op) in COMPARE_SWAPS:
                    new = COMPARE_SWAPS[type(op)]
                    text = f"{SYMBOL[type(op)]} -> {SYMBOL[new]}"
                    mutants.append(Mutant(index, part, line, text))
        elif isinstance(node, ast.BoolOp):
            other = "or" if isinstance(node.op, ast.And) else "and"
            mutants.append(Mutant(index, 0, line, f"{SYMBOL[type(node.op)]} -> {other}"))
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            mutants.append(Mutant(index, 0, line, "drop `not`"))
        elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAPS:
            new_op = BINOP_SWAPS[type(node.op)]
            text = f"{SYMBOL[type(node.op)]} -> {SYMBOL[new_op]}"
            mutants.append(Mutant(index, 0, line, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            mutants.append(Mutant(index, 0, line, f"{node.value} -> {not node.value}"))
    return mutants


class _Apply(ast.NodeTransformer):
    def __init__(self, target: ast.AST, part: int) -> None:
        self.target = target
        self.part = part

    def visit(self, node: ast.AST) -> ast.AST:
        if node is not self.target:
            return super().visit(node)
        if isinstance(node, ast.Compare):
            ops = list(node.ops)
            ops[self.part] = COMPARE_SWAPS[type(ops[self.part])]()
            node.ops = ops
        elif isinstance(node, ast.BoolOp):
            node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        elif isinstance(node, ast.UnaryOp):
            return node.operand
        elif isinstance(node, ast.BinOp):
            node.op = BINOP_SWAPS[type(node.op)]()
        elif isinstance(node, ast.Constant):
            node.value = not node.value
        return node


def mutate(tree: ast.Module, mutant: Mutant) -> str:
    clone = copy.deepcopy(tree)
    target = list(ast.walk(clone))[mutant.index]
    new = _Apply(target, mutant.part).visit(clone)
    return ast.unparse(ast.fix_missing_locations(new))


def run_tests(root: Path, tests: list[str], extra: list[str], timeout: float) -> bool:
    """True when the tests pass (the mutant survives)."""
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    # The pytest script, not `python -m pytest`: -m would put the repository (and its
    # unmutated package) first on sys.path.
    pytest = Path(sys.executable).parent / "pytest"
    cmd = [str(pytest), "-x", "-q", "-p", "no:cacheprovider", *extra, *tests]
    try:
        proc = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False  # a mutant that hangs the tests is noticed
    return proc.returncode == 0


def _sandbox() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        shutil.copytree(REPO / PACKAGE, Path(tmp) / PACKAGE)
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", type=Path, help="e.g. housing_mlops/promote.py")
    parser.add_argument("tests", nargs="+", help="test files (pytest paths)")
    parser.add_argument("--functions", help="comma-separated function names (default: all)")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per test run")
    args = parser.parse_args(argv)

    module = args.module.resolve()
    relative = module.relative_to(REPO)
    source = module.read_text()
    tree = ast.parse(source)
    functions = set(args.functions.split(",")) if args.functions else None
    mutants = find_mutants(tree, functions)
    where = f" in {', '.join(sorted(functions))}" if functions else ""
    print(f"{relative}: {len(mutants)} single-operator mutants{where}", flush=True)

    for sandbox in _sandbox():
        target = sandbox / relative
        if not run_tests(sandbox, args.tests, args.pytest_args.split(), args.timeout):
            print("the tests fail on the unmutated module: fix them first", file=sys.stderr)
            return 1
        survivors: list[Mutant] = []
        started = time.monotonic()
        for n, mutant in enumerate(mutants, 1):
            target.write_text(mutate(tree, mutant))
            survived = run_tests(sandbox, args.tests, args.pytest_args.split(), args.timeout)
            verdict = "SURVIVED" if survived else "killed"
            print(f"  [{n}/{len(mutants)}] line {mutant.line}: {mutant.description}: {verdict}")
            if survived:
                survivors.append(mutant)
        target.write_text(source)

    killed = len(mutants) - len(survivors)
    score = 100.0 * killed / len(mutants) if mutants else 100.0
    elapsed = time.monotonic() - started
    print(
        f"\nmutation score {relative}: {killed}/{len(mutants)} killed ({score:.0f}%), "
        f"{elapsed:.0f}s"
    )
    for mutant in survivors:
        print(f"  survivor: line {mutant.line}: {mutant.description}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

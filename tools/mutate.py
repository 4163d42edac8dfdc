"""Mutation testing of spamgpt modules against their fast test modules (mutmut 3.8).

    python tools/mutate.py labels data.batching # mutates spamgpt/labels.py against
                                                # tests/test_labels.py, then data/batching.py
    python tools/mutate.py --show labels        # also prints each survivor's diff
    python tools/mutate.py data -k "not split_stage"   # leaves out tests that run a stage

A test that starts a stage in a subprocess stops mutmut's first run (its stats: the
subprocess, in a temporary folder, cannot find mutmut's settings); leave such tests out with
-k, as pytest's -k reads it (they are end-to-end: the module's unit tests are what must pin it).

Each module runs in its own mutmut workspace, mutants/<module>/ (ignored by git), so that the
results of one module stay there (`cd mutants/<module> && mutmut show NAME` after a run) and
one module's test selection never invalidates another's. The settings shared by every module
are pyproject.toml's [tool.mutmut]; this script adds the one module to mutate and its test
module. Survivors listed in tests/mutation-equivalents.txt are counted as equivalent.
"""

import argparse
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENTS = ROOT / "tests" / "mutation-equivalents.txt"


def equivalent_mutants() -> set[str]:
    """The mutant names of tests/mutation-equivalents.txt (lines: module, mutant name, why)."""
    lines = EQUIVALENTS.read_text().splitlines() if EQUIVALENTS.exists() else []
    return {line.split()[1] for line in lines if line.strip() and not line.startswith("#")}


def mutate(
    module: str,
    max_children: int,
    show: bool,
    keyword: str | None,
    timeout_multiplier: float | None = None,
) -> None:
    """Runs in mutants/<module>/, a workspace linking every top-level entry the repo tracks."""
    from _pytest.nodes import Node
    from mutmut import __main__ as mutmut_cli
    from mutmut import configuration
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code

    # mutmut 3.8 reads a test's id as item._nodeid, which pytest 9 no longer has (nodeid is it)
    Node._nodeid = property(lambda node: node.nodeid)
    source = f"spamgpt/{module.replace('.', '/')}.py"
    config = configuration.config()
    config.only_mutate = [source]
    config.pytest_add_cli_args_test_selection = [f"tests/test_{module.rpartition('.')[2]}.py"]
    if keyword:
        config.pytest_add_cli_args_test_selection += ["-k", keyword]
    if timeout_multiplier is not None:
        config.timeout_multiplier = timeout_multiplier
    # the tests read the repo's files too (params.yaml, dvc.yaml, docs): all of them are copied
    config.also_copy += [
        Path(name) for name in os.listdir(".") if name not in ("mutants", "spamgpt")
    ]
    # mutmut keeps a mutant's result until its function changes: check again every mutant the
    # tests did not kill last time, since tests may have been added since.
    results = SourceFileMutationData(path=source)
    results.load()
    for name, exit_code in results.exit_code_by_key.items():
        if status_by_exit_code[exit_code] not in ("killed", "timeout"):
            results.exit_code_by_key[name] = None
    if results.exit_code_by_key:
        results.save()
    mutmut_cli.cli(["run", "--max-children", str(max_children)], standalone_mode=False)

    results = SourceFileMutationData(path=source)
    results.load()
    equivalent = equivalent_mutants()
    statuses = Counter()
    survivors = []
    for name, exit_code in sorted(results.exit_code_by_key.items()):
        status = status_by_exit_code[exit_code]
        if status == "survived" and name in equivalent:
            status = "equivalent"
        elif status not in ("killed", "timeout"):  # a timeout: the tests hang, caught too
            survivors.append((name, status))
        statuses[status] += 1
    generated = sum(statuses.values())
    surviving = len(survivors)
    percent = 100 * surviving / max(1, generated - statuses["equivalent"])
    print(f"\n{module}: {generated} generated, {dict(statuses)}, {percent:.1f}% surviving")
    for name, status in survivors:
        print(f"  {status}: {name}")
        if show:
            mutmut_cli.cli(["show", name], standalone_mode=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "modules", nargs="+", help="dotted names under spamgpt, e.g. labels data.batching"
    )
    parser.add_argument("--max-children", type=int, default=2, help="parallel mutants (2)")
    parser.add_argument("--show", action="store_true", help="print each survivor's diff")
    parser.add_argument("-k", dest="keyword", help="pytest -k: which of the tests to run")
    parser.add_argument(
        "--timeout-multiplier",
        type=float,
        help="a mutant's run is stopped (a timeout) after this many times its tests' time in "
        "mutmut's first run, plus 1 s (mutmut's default 15; more on a loaded machine, where a "
        "test's module fixture, timed with the first test only, also runs before the others)",
    )
    parser.add_argument("--in-workspace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.in_workspace:
        mutate(args.modules[0], args.max_children, args.show, args.keyword, args.timeout_multiplier)
        return
    # One thread per test process: the children are the parallelism. No PYTHONPATH: the tests
    # must import the mutated copy, not the checkout.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for module in args.modules:
        workspace = ROOT / "mutants" / module
        workspace.mkdir(parents=True, exist_ok=True)
        tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
        for name in {path.split("/")[0] for path in tracked.stdout.splitlines()}:
            if not (workspace / name).exists():
                (workspace / name).symlink_to(ROOT / name)
        command = [sys.executable, Path(__file__).resolve(), module, "--in-workspace"]
        command += ["--max-children", str(args.max_children)] + ["--show"] * args.show
        command += ["-k", args.keyword] if args.keyword else []
        if args.timeout_multiplier is not None:
            command += ["--timeout-multiplier", str(args.timeout_multiplier)]
        subprocess.run(command, cwd=workspace, env=env, check=True)


if __name__ == "__main__":
    main()

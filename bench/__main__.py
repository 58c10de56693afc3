"""
Run the benchmarks: every C{bench/*_bench.py}, or those named on the
command line (C{python -m bench bftp chat}).
"""

import importlib
import pathlib
import sys


def main(argv: list[str]) -> int:
    here = pathlib.Path(__file__).parent
    names = argv or sorted(p.stem[: -len("_bench")] for p in here.glob("*_bench.py"))
    status = 0
    for name in names:
        print(f"=== {name} ===", flush=True)
        module = importlib.import_module(f"bench.{name}_bench")
        status |= module.main() or 0
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""
Benchmarks: each module C{bench/*_bench.py} runs ours and a peer in the same
run and prints figures and ratios.  C{make bench} runs them all; C{python -m
bench NAME...} runs some.  Not tests: nothing here is timed in C{make test}.
"""

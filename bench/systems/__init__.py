"""One module per benchmarked system, each runnable as ``python -m bench.systems.<name>``.

Every module runs one workload in its own process and prints one JSON line (see
``_common.py``): ``bench/run.py`` starts them in the peers' virtualenv, interleaved.
"""

"""Benchmarks of lexigram-events side by side with DBOS, sagaz and hand-written code.

Run them with ``make bench`` (see ``docs/benchmarks.md``). Nothing here is a test: pytest
never collects this package.
"""

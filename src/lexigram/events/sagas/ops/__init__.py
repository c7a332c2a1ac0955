"""Operators' tools: the ``lexigram-sagas`` command, the web admin, and what they share.

- :mod:`~lexigram.events.sagas.ops.urls`: a store from a URL (``sqlite:///path``,
  ``postgresql://...``);
- :mod:`~lexigram.events.sagas.ops.timeline`: a saga's record as a timeline (steps,
  attempts, times, durations, errors, compensations, what it waits for);
- :mod:`~lexigram.events.sagas.ops.cli`: the command;
- :mod:`~lexigram.events.sagas.ops.web`: the web admin (extra ``ui``).

The core of the command needs nothing beyond the standard library (and the driver of the
store it opens).
"""

"""``python -m lexigram.events.sagas``: the ``lexigram-sagas`` command."""

from __future__ import annotations

from lexigram.events.sagas.ops.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

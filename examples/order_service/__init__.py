"""An order service built on lexigram-events sagas: an HTTP API and saga workers.

Two kinds of process share one PostgreSQL database:

- the API (:mod:`examples.order_service.app`, FastAPI) only *enqueues* order sagas and
  reads or cancels them; it never runs a step;
- workers (:mod:`examples.order_service.worker`) *serve*: they claim enqueued orders and run
  the saga of :mod:`examples.order_service.saga` against the fake inventory, payment and
  shipping services of :mod:`examples.order_service.services`, whose state lives in their
  own tables of the same database.

Start as many workers as you like, kill one: its orders are taken over by the others when
its lease expires. See ``examples/order_service/README.md`` for how to run it.
"""

"""Travel booking: parallel bookings, a branch on the price, and compensation of branches.

One orchestrated flow books a trip:

1. ``book_travel`` — a parallel group: the flight, the hotel and the rental car are booked
   at the same time (watch the "booking..." lines interleave);
2. a conditional transition reads the prices the three bookings returned: a trip over the
   budget goes to ``manager_approval``, a cheaper one straight to ``issue_tickets``;
3. ``issue_tickets`` ends the flow.

Three trips show what happens:

- Lisbon: cheap, so no approval is needed; every step completes;
- Tokyo: expensive, so a manager approves it first;
- Reykjavik: no car is left; the flight and the hotel, already booked by their branches,
  are cancelled (in reverse completion order) and the saga ends ``compensated``.

Finally the script prints a Mermaid diagram of the Reykjavik saga, each step coloured by
its status. Run it with ``python examples/travel_booking.py``.
"""

from __future__ import annotations

import asyncio

from lexigram.events.sagas.config import SagaConfig
from lexigram.events.sagas.context import SagaContext, SagaStepResult
from lexigram.events.sagas.diagram import instance_to_mermaid
from lexigram.events.sagas.orchestrator import OrchestratedStep, SagaOrchestrator, transition
from lexigram.events.sagas.types import SagaRecord

APPROVAL_THRESHOLD = 2000
"""Trips costing more than this need a manager's approval."""


def say(text: str) -> None:
    """Print one line of the story."""
    print(f"  {text}")


class Booking:
    """A booking service: a ``SagaAction`` that books in ``execute`` and cancels in ``compensate``.

    Args:
        kind: What it books ("flight", "hotel", "car").
        prices: Price by destination; a destination missing here has nothing available.
        latency: Simulated seconds a booking takes (so the parallel bookings interleave).
    """

    def __init__(self, kind: str, prices: dict[str, int], latency: float) -> None:
        self.kind = kind
        self.prices = prices
        self.latency = latency
        self.bookings: dict[str, str] = {}

    async def execute(self, ctx: SagaContext) -> SagaStepResult:
        """Book for the trip; a business failure when nothing is available."""
        destination: str = ctx["destination"]
        say(f"{self.kind}: booking for {destination}...")
        await asyncio.sleep(self.latency)
        price = self.prices.get(destination)
        if price is None:
            say(f"{self.kind}: nothing available in {destination}")
            return SagaStepResult.fail(f"no {self.kind} available in {destination}")
        # The idempotency key is stable across retries and restarts: a real service would
        # use it to avoid booking twice.
        reference = f"{self.kind[:2].upper()}-{ctx['trip_id']}"
        self.bookings[ctx.idempotency_key or reference] = reference
        say(f"{self.kind}: booked {reference} for ${price}")
        return SagaStepResult.Ok({f"{self.kind}_price": price, f"{self.kind}_ref": reference})

    async def compensate(self, ctx: SagaContext) -> SagaStepResult:
        """Cancel the booking (idempotent: cancelling twice is harmless)."""
        reference = ctx.step_results[self.kind][f"{self.kind}_ref"]
        say(f"{self.kind}: cancelled {reference}")
        return SagaStepResult.Ok()


def trip_total(ctx: SagaContext) -> int:
    """The trip's price: the parallel bookings' outputs are merged into the group's output."""
    quote = ctx.step_results["book_travel"]
    return sum(value for key, value in quote.items() if key.endswith("_price"))


@transition("manager_approval", "issue_tickets")
def route_on_price(ctx: SagaContext) -> str:
    """Send expensive trips to a manager (a pure function of the persisted context)."""
    return "manager_approval" if trip_total(ctx) > APPROVAL_THRESHOLD else "issue_tickets"


async def manager_approval(ctx: SagaContext) -> SagaStepResult:
    """A manager approves trips up to a hard limit."""
    total = trip_total(ctx)
    if total > 10_000:
        say(f"manager: rejected a ${total} trip")
        return SagaStepResult.fail(f"trip of ${total} rejected by the manager")
    say(f"manager: approved a ${total} trip")
    return SagaStepResult.Ok({"approved_by": "m.rossi"})


async def issue_tickets(ctx: SagaContext) -> dict[str, str]:
    """Send the traveller their itinerary (the last step: nothing to undo)."""
    say(f"tickets: itinerary for trip {ctx['trip_id']} sent (total ${trip_total(ctx)})")
    return {"itinerary": f"IT-{ctx['trip_id']}"}


def travel_flow() -> list[OrchestratedStep]:
    """The flow: three parallel bookings, then a branch on the total price."""
    flight = Booking("flight", {"Lisbon": 420, "Tokyo": 1850, "Reykjavik": 390}, latency=0.03)
    hotel = Booking("hotel", {"Lisbon": 380, "Tokyo": 1200, "Reykjavik": 610}, latency=0.02)
    car = Booking("car", {"Lisbon": 150, "Tokyo": 300}, latency=0.01)
    return [
        OrchestratedStep(
            "book_travel",
            parallel=[
                OrchestratedStep("flight", action=flight, max_retries=2, timeout=10),
                OrchestratedStep("hotel", action=hotel, max_retries=2, timeout=10),
                OrchestratedStep("car", action=car, max_retries=2, timeout=10),
            ],
            next_step=route_on_price,
        ),
        OrchestratedStep("manager_approval", action=manager_approval, next_step="issue_tickets"),
        OrchestratedStep("issue_tickets", action=issue_tickets),
    ]


def describe(record: SagaRecord) -> None:
    """Print the outcome of one saga."""
    print(f"=> {record.status}" + (f": {record.error}" if record.error else ""))
    for name, step in record.steps.items():
        indent = "    " if step.parent else ""
        print(f"     {indent}{name}: {step.status}")


async def main() -> None:
    """Book three trips and show what the orchestrator did for each."""
    async with SagaOrchestrator(config=SagaConfig(retry_delay_seconds=0.1)) as orchestrator:
        flow = orchestrator.define("travel_booking", travel_flow())
        failed: SagaRecord | None = None
        for number, destination in enumerate(("Lisbon", "Tokyo", "Reykjavik"), start=1):
            print(f"\nTrip {number} to {destination}:")
            record = await orchestrator.execute(
                "travel_booking",
                {"trip_id": f"T{number}", "destination": destination},
                saga_id=f"trip-{number}",
            )
            describe(record)
            if record.error:
                failed = record
        if failed is not None:
            print(f"\nMermaid diagram of {failed.saga_id} (paste it into a Mermaid renderer):\n")
            print(instance_to_mermaid(flow, failed))


if __name__ == "__main__":
    asyncio.run(main())

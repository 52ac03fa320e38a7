"""WatchOrder's wakeups: kept while someone watches an order, gone once nobody does.

Several order instances share one database, so an order watched here is often saved by
another instance (its saga runs where it was created). This instance then never gets the save
itself, only the poll sees it; its wakeup for the order must still go when the watch ends.
"""

from __future__ import annotations

from services.common.database import Database
from services.order import domain
from services.order.domain import OrderStatus
from services.order.orders import Orders
from services.order.store import OrderStore
from tests.integration.services.test_order_store import ADA, database, make_order  # noqa: F401 - fixture

T = "2025-01-01T00:00:01.000000+00:00"


async def test_a_watch_of_an_order_saved_elsewhere_leaves_no_wakeup_behind(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    here = Orders(store, watch_poll_seconds=0.01)
    order, _ = await store.create(make_order("ord_elsewhere"))
    watch = here.watch(ADA, order.order_id)
    assert (await anext(watch)).version == order.version

    # Another instance's saga saves the order: a new PENDING version, then CANCELLED.
    cancelling = await store.save(domain.begin_cancel(order, "declined", T))
    assert (await anext(watch)).version == cancelling.version
    assert order.order_id in here._changed  # watched: its wakeup is kept

    await store.save(domain.cancel(cancelling, (), T))
    assert (await anext(watch)).status is OrderStatus.CANCELLED
    assert [later async for later in watch] == []  # the watch ended at the terminal state
    assert here._changed == {}
    await here.close()


async def test_a_watcher_that_goes_away_takes_its_wakeup_with_it(database: Database) -> None:  # noqa: F811
    store = OrderStore(database)
    here = Orders(store, watch_poll_seconds=0.01)
    order, _ = await store.create(make_order("ord_left"))
    first, second = here.watch(ADA, order.order_id), here.watch(ADA, order.order_id)
    await anext(first), await anext(second)
    cancelling = await store.save(domain.begin_cancel(order, "declined", T))
    assert (await anext(first)).version == (await anext(second)).version == cancelling.version

    await first.aclose()  # one watcher left: the other still needs its wakeup
    assert order.order_id in here._changed
    await second.aclose()
    assert here._changed == {}
    await here.close()

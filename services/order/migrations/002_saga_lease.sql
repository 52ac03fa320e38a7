-- The saga runner's lease: which process is driving an unfinished order, and until when
-- (epoch seconds). A runner claims an order before calling any participant, renews the lease
-- while it works, and every save it makes is conditional on still holding it, so two live
-- instances never act on one order at once; a crashed holder's lease simply expires.
ALTER TABLE orders ADD COLUMN lease_owner TEXT NOT NULL DEFAULT '';
ALTER TABLE orders ADD COLUMN lease_expires DOUBLE PRECISION NOT NULL DEFAULT 0;

-- 1 while the saga has work left: PENDING, or a CONFIRMED order whose cancellation has begun
-- (its status stays CONFIRMED until every undo is done). Resume-on-start and
-- `python -m services.order.sagas` look orders up by it.
ALTER TABLE orders ADD COLUMN saga_open INTEGER NOT NULL DEFAULT 0;
UPDATE orders SET saga_open = 1 WHERE status = 'PENDING';
CREATE INDEX IF NOT EXISTS orders_saga_open ON orders (update_time) WHERE saga_open = 1;

-- The sales remember, per order, the stream version of the last order
-- event they applied, so that an event applied once is never booked again
-- (a paid order cancelled, then handed its payment a second time by a
-- retried parked message, is booked once). The sales projection's version
-- 2 rebuilds its tables from the log, so every row has one.
ALTER TABLE rm_sales_orders ADD COLUMN version bigint;

-- Revenue sums many orders' totals, each up to i64: a bigint sum overflows
-- long before any one order does, and the overflow would park the sales
-- projection. numeric holds any sum of i64 amounts exactly (the API answers
-- it as an integer of up to 128 bits).
ALTER TABLE rm_sales_daily ALTER COLUMN revenue_minor TYPE numeric;
ALTER TABLE rm_sales_by_product ALTER COLUMN revenue_minor TYPE numeric;

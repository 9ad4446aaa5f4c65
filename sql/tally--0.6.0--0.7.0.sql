\echo Use "ALTER EXTENSION tally UPDATE TO '0.7.0'" to load this file. \quit

-- tally 0.6.0 -> 0.7.0: the hot path without a per-call SET.
--
-- check_and_increment_usage and decrement_usage no longer carry a
-- SET search_path clause, which made every call save, parse and restore the
-- setting and cost the single-tenant path about a fifth of its throughput.
-- They now put pg_catalog alone on the search path inside the library for
-- their own statements, which costs no parsing. They still run with
-- tally_owner's rights, and no object a caller plants is used by them.

ALTER FUNCTION tally.check_and_increment_usage(text, text, bigint, text) RESET search_path;
ALTER FUNCTION tally.decrement_usage(text, text, bigint) RESET search_path;

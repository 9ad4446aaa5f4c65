\echo Use "ALTER EXTENSION tally UPDATE TO '0.10.0'" to load this file. \quit

-- tally 0.9.0 -> 0.10.0: enforce_count's trigger function reads a
-- statement's rows in the library, straight from its transition tables.

-- Replaced in place, so the triggers of every enforced table keep their
-- function and need no change. A SECURITY DEFINER function still, owned by
-- tally_owner with its privileges as they were; it pins its search path
-- inside rather than with a SET clause (which CREATE OR REPLACE removes).
CREATE OR REPLACE FUNCTION tally._enforce_count_rows() RETURNS trigger
LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'tally_enforce_count_rows';

-- The trigger function's call into the library, which it now is.
DROP FUNCTION tally._enforce_apply_all(text, text[], bigint[]);

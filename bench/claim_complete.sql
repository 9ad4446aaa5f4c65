-- A usage-report worker's loop without the HTTP call: claim a batch (one
-- transaction), then complete it (another).
SELECT coalesce(array_agg(id), '{}') AS ids FROM tally.claim_usage_reports(:batch, '5 minutes') \gset
SELECT count(tally.complete_usage_report(id)) FROM unnest(:ids::bigint[]) AS id;

-- A usage-report worker's loop without the HTTP call: claim a batch (one
-- transaction), then complete it (another).
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(lease_token), '{}') AS tokens FROM tally.claim_usage_reports(:batch, '5 minutes') \gset
SELECT count(tally.complete_usage_report(id, token)) FROM unnest(:ids::bigint[], :tokens::uuid[]) AS c (id, token);

-- What tallyd's usage-report worker needs (0.4.0): failed reports put back
-- in the queue. (fail_usage_report also takes a retry_after since 0.4.0.)

-- Put failed reports back in the queue, with their attempts counted from
-- zero: the given ids, or every failed report when ids is NULL. Reports
-- that are not failed are left alone. Returns how many were put back.
CREATE FUNCTION tally.requeue_failed_usage_reports(ids bigint[] DEFAULT NULL) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    unknown bigint[];
    requeued bigint;
BEGIN
    SELECT array_agg(i ORDER BY i) INTO unknown
      FROM unnest(ids) AS i
     WHERE NOT EXISTS (SELECT FROM tally.usage_reports AS r WHERE r.id = i);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'usage report not found' USING ERRCODE = 'no_data_found',
            DETAIL = format('no usage report has id %s', array_to_string(unknown, ', ')),
            HINT = 'list failed reports with tallyd reports, or in tally.usage_reports';
    END IF;
    UPDATE tally.usage_reports AS r
       SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL, failed_at = NULL
     WHERE r.status = 'failed' AND (ids IS NULL OR r.id = ANY (ids));
    GET DIAGNOSTICS requeued = ROW_COUNT;
    RETURN requeued;
END
$$;

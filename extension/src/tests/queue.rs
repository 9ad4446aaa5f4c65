//! The usage-report queue: claims, leases, completion, failures with
//! backoff, requeueing and cleanup.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    /// Messages are billed (meter event `tally_messages`); chatbots are not.
    fn billed_fixture() {
        fixture();
        run("UPDATE tally.metrics SET stripe_meter_event = 'tally_messages' WHERE metric = 'messages'");
        run("SELECT tally.link_provider_customer('acme', 'stripe', 'cus_acme')");
    }

    fn reports() -> Vec<(String, i64, String)> {
        Spi::connect(|client| {
            client
                .select(
                    "SELECT event_name, units, status FROM tally.usage_reports ORDER BY id",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| {
                    (
                        row.get(1).unwrap().unwrap(),
                        row.get(2).unwrap().unwrap(),
                        row.get(3).unwrap().unwrap(),
                    )
                })
                .collect()
        })
    }

    fn report(event: &str, units: i64, status: &str) -> (String, i64, String) {
        (event.to_string(), units, status.to_string())
    }

    /// Ids of the reports one claim returns.
    fn claim(batch: i32, lease: &str) -> Vec<i64> {
        Spi::connect_mut(|client| {
            client
                .update(
                    &format!("SELECT id FROM tally.claim_usage_reports({batch}, '{lease}')"),
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| row.get::<i64>(1).unwrap().unwrap())
                .collect()
        })
    }

    fn status(id: i64) -> String {
        value(&format!(
            "SELECT status || '/' || attempts FROM tally.usage_reports WHERE id = {id}"
        ))
        .unwrap()
    }

    /// Seconds until the report is due again.
    fn delay(id: i64) -> f64 {
        value(&format!(
            "SELECT extract(epoch FROM next_attempt_at - now())::float8 FROM tally.usage_reports WHERE id = {id}"
        ))
        .unwrap()
    }

    /// Make every report due now, as if its backoff had passed.
    fn time_passes() {
        run("UPDATE tally.usage_reports SET next_attempt_at = now() WHERE status = 'pending'");
    }

    #[pg_test]
    fn allowed_increments_of_billed_metrics_are_reported() {
        billed_fixture();
        check("'acme', 'messages', 5");
        check("'acme', 'messages', 2");
        check("'acme', 'messages', 1000");
        check("'acme', 'chatbots'");
        check("'acme', 'messages', 3, 'key'");
        check("'acme', 'messages', 3, 'key'");
        assert_eq!(
            reports(),
            vec![
                report("tally_messages", 5, "pending"),
                report("tally_messages", 2, "pending"),
                report("tally_messages", 3, "pending")
            ]
        );
        assert_eq!(
            value::<i64>("SELECT count(DISTINCT identifier) FROM tally.usage_reports"),
            Some(3)
        );
    }

    #[pg_test]
    fn a_changed_meter_event_applies_to_the_next_increment() {
        billed_fixture();
        check("'acme', 'messages'");
        run(
            "UPDATE tally.metrics SET stripe_meter_event = 'messages_v2' WHERE metric = 'messages'",
        );
        check("'acme', 'messages'");
        run("UPDATE tally.metrics SET stripe_meter_event = NULL WHERE metric = 'messages'");
        check("'acme', 'messages'");
        assert_eq!(
            reports(),
            vec![
                report("tally_messages", 1, "pending"),
                report("messages_v2", 1, "pending")
            ]
        );
    }

    #[pg_test]
    fn decrements_and_syncs_are_never_reported() {
        billed_fixture();
        check("'acme', 'messages', 5");
        run("SELECT tally.decrement_usage('acme', 'messages'), tally.sync_usage('acme', 'messages', 50)");
        assert_eq!(reports().len(), 1);
    }

    #[pg_test]
    fn claims_lease_reports_oldest_first() {
        billed_fixture();
        for units in 1..=5 {
            check(&format!("'acme', 'messages', {units}"));
        }
        let first = claim(2, "5 minutes");
        assert_eq!(first.len(), 2);
        assert_eq!(status(first[0]), "pending/1");
        let rest = claim(10, "5 minutes");
        assert_eq!(rest.len(), 3);
        assert!(first.iter().chain(&rest).is_sorted());
        // Everything is leased now.
        assert_eq!(claim(10, "5 minutes"), Vec::<i64>::new());
        let stats = value::<String>("SELECT format('%s %s %s %s', pending, leased, due, failed) FROM tally.usage_report_stats()");
        assert_eq!(stats.as_deref(), Some("5 5 0 0"));
        // A lease that ran out makes the report claimable again.
        run(&format!(
            "UPDATE tally.usage_reports SET lease_until = now() WHERE id = {}",
            first[0]
        ));
        assert_eq!(claim(10, "5 minutes"), vec![first[0]]);
        assert_eq!(status(first[0]), "pending/2");
    }

    #[pg_test]
    fn the_claim_carries_what_the_worker_sends() {
        billed_fixture();
        check("'acme', 'messages', 7");
        let row = value::<String>(
            "SELECT concat_ws(' ', tenant_id, metric, event_name, units, stripe_customer_id, attempts,
                    length(identifier), created_at <= now(), lease_until > now())
               FROM tally.claim_usage_reports(1, '1 minute')",
        );
        assert_eq!(
            row.as_deref(),
            Some("acme messages tally_messages 7 cus_acme 1 36 t t")
        );
    }

    #[pg_test]
    fn completion_is_idempotent_and_final() {
        billed_fixture();
        check("'acme', 'messages'");
        let id = claim(1, "1 minute")[0];
        run(&format!("SELECT tally.complete_usage_report(id, lease_token) FROM tally.usage_reports WHERE id = {id}"));
        let completed_at = value::<String>(&format!(
            "SELECT completed_at::text FROM tally.usage_reports WHERE id = {id}"
        ));
        run(&format!("SELECT tally.complete_usage_report(id, lease_token) FROM tally.usage_reports WHERE id = {id}"));
        run(&format!(
            "SELECT tally.fail_usage_report(id, lease_token, 'late failure', true) FROM tally.usage_reports WHERE id = {id}"
        ));
        assert_eq!(status(id), "completed/1");
        assert_eq!(
            value::<String>(&format!(
                "SELECT completed_at::text FROM tally.usage_reports WHERE id = {id}"
            )),
            completed_at
        );
        assert_eq!(claim(1, "1 minute"), Vec::<i64>::new());
    }

    #[pg_test]
    fn transient_failures_back_off_longer_each_time() {
        billed_fixture();
        check("'acme', 'messages'");
        let mut delays = Vec::new();
        for attempt in 1..=5 {
            let id = claim(1, "1 minute")[0];
            run(&format!(
                "SELECT tally.fail_usage_report(id, lease_token, 'stripe answered 503') FROM tally.usage_reports WHERE id = {id}"
            ));
            assert_eq!(status(id), format!("pending/{attempt}"));
            delays.push(delay(id));
            assert_eq!(
                claim(1, "1 minute"),
                Vec::<i64>::new(),
                "claimed before its backoff passed"
            );
            time_passes();
        }
        // 10 s doubling, plus up to 25% jitter.
        for (attempt, seconds) in delays.iter().enumerate() {
            let base = 10.0 * 2f64.powi(attempt as i32);
            assert!(
                *seconds >= base - 1.0 && *seconds <= base * 1.25 + 1.0,
                "attempt {}: {seconds} s",
                attempt + 1
            );
        }
        assert!(delays.is_sorted_by(|a, b| a < b), "{delays:?}");
        assert_eq!(
            value::<String>("SELECT last_error FROM tally.usage_reports").as_deref(),
            Some("stripe answered 503")
        );
    }

    #[pg_test]
    fn a_permanent_failure_is_kept_and_the_queue_moves_on() {
        billed_fixture();
        check("'acme', 'messages', 1");
        check("'acme', 'messages', 2");
        let ids = claim(1, "1 minute");
        run(&format!("SELECT tally.fail_usage_report(id, lease_token, 'resource_missing: no such customer', permanent => true) FROM tally.usage_reports WHERE id = {}", ids[0]));
        assert_eq!(status(ids[0]), "failed/1");
        time_passes();
        let next = claim(10, "1 minute");
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], ids[0]);
        // A late success still counts.
        run(&format!("SELECT tally.complete_usage_report(id, lease_token) FROM tally.usage_reports WHERE id = {}", ids[0]));
        assert_eq!(status(ids[0]), "completed/1");
    }

    #[pg_test]
    fn the_last_allowed_attempt_ends_the_report() {
        billed_fixture();
        run("SET LOCAL tally.report_max_attempts = 3");
        check("'acme', 'messages'");
        for _ in 0..3 {
            let id = claim(1, "1 minute")[0];
            run(&format!("SELECT tally.fail_usage_report(id, lease_token, 'timeout') FROM tally.usage_reports WHERE id = {id}"));
            time_passes();
        }
        assert_eq!(
            value::<String>("SELECT status || '/' || attempts FROM tally.usage_reports").as_deref(),
            Some("failed/3")
        );
        assert_eq!(claim(1, "1 minute"), Vec::<i64>::new());
    }

    #[pg_test]
    fn a_lease_that_runs_out_after_the_last_attempt_fails_the_report() {
        billed_fixture();
        run("SET LOCAL tally.report_max_attempts = 2");
        check("'acme', 'messages'");
        check("'acme', 'messages'");
        let first = claim(1, "1 minute")[0];
        run(&format!(
            "UPDATE tally.usage_reports SET lease_until = now() WHERE id = {first}"
        ));
        assert_eq!(claim(1, "1 minute"), vec![first]);
        run(&format!(
            "UPDATE tally.usage_reports SET lease_until = now() WHERE id = {first}"
        ));
        // Its worker died twice: the next claim gives it up and takes the other.
        let next = claim(2, "1 minute");
        assert_eq!(next.len(), 1);
        assert_ne!(next[0], first);
        assert_eq!(status(first), "failed/2");
        assert!(value::<String>(&format!(
            "SELECT last_error FROM tally.usage_reports WHERE id = {first}"
        ))
        .unwrap()
        .contains("lease expired"));
    }

    #[pg_test]
    fn queue_functions_reject_bad_arguments() {
        billed_fixture();
        check("'acme', 'messages'");
        assert_fails(
            "SELECT * FROM tally.claim_usage_reports(0)",
            "22023",
            "batch must be positive",
        );
        assert_fails(
            "SELECT * FROM tally.claim_usage_reports(NULL)",
            "22004",
            "batch must not be null",
        );
        assert_fails(
            "SELECT * FROM tally.claim_usage_reports(10, '0 seconds')",
            "22023",
            "lease must be a positive interval",
        );
        assert_fails(
            "SELECT * FROM tally.claim_usage_reports(10, '-1 minute')",
            "22023",
            "lease must be a positive interval",
        );
        assert_fails(
            "SELECT * FROM tally.claim_usage_reports(10, '61 minutes')",
            "22023",
            "lease must be at most 01:00:00",
        );
        assert_fails(
            "SELECT * FROM tally.claim_usage_reports(10, '1 day')",
            "22023",
            "lease must be at most 01:00:00",
        );
        assert_fails(
            "SELECT tally.complete_usage_report(1, NULL)",
            "22004",
            "lease_token must not be null",
        );
        assert_fails(
            "SELECT tally.fail_usage_report(1, NULL, 'x')",
            "22004",
            "lease_token must not be null",
        );
        assert_fails(
            "SELECT tally.complete_usage_report(424242, gen_random_uuid())",
            "P0002",
            "usage report not found",
        );
        assert_fails(
            "SELECT tally.complete_usage_report(NULL, gen_random_uuid())",
            "22004",
            "id must not be null",
        );
        assert_fails(
            "SELECT tally.fail_usage_report(424242, gen_random_uuid(), 'x')",
            "P0002",
            "usage report not found",
        );
        assert_fails(
            "SELECT tally.fail_usage_report(1, gen_random_uuid(), NULL)",
            "22004",
            "error must not be null",
        );
        assert_fails(
            "SELECT tally.cleanup_usage_reports('-1 day')",
            "22023",
            "older_than must be at least 00:00:00",
        );
    }

    #[pg_test]
    fn a_tenant_with_unsent_usage_cannot_be_deleted() {
        billed_fixture();
        check("'acme', 'messages'");
        assert_fails(
            "DELETE FROM tally.tenants WHERE tenant_id = 'acme'",
            "55000",
            "tenant has unsent usage",
        );
        let id = claim(1, "1 minute")[0];
        run(&format!("SELECT tally.complete_usage_report(id, lease_token) FROM tally.usage_reports WHERE id = {id}"));
        run("DELETE FROM tally.tenants WHERE tenant_id = 'acme'");
        assert_eq!(
            value::<i64>("SELECT count(*) FROM tally.usage_reports"),
            Some(0)
        );
    }

    #[pg_test]
    fn completed_reports_are_cleaned_up_and_failed_ones_kept() {
        billed_fixture();
        check("'acme', 'messages'");
        check("'acme', 'messages'");
        let ids = claim(2, "1 minute");
        run(&format!("SELECT tally.complete_usage_report(id, lease_token) FROM tally.usage_reports WHERE id = {}", ids[0]));
        run(&format!(
            "SELECT tally.fail_usage_report(id, lease_token, 'bad request', true) FROM tally.usage_reports WHERE id = {}",
            ids[1]
        ));
        run("UPDATE tally.usage_reports SET completed_at = now() - interval '31 days', failed_at = now() - interval '31 days'");
        assert_eq!(
            value::<i64>("SELECT tally.cleanup_usage_reports()"),
            Some(1)
        );
        assert_eq!(reports(), vec![report("tally_messages", 1, "failed")]);
    }

    #[pg_test]
    fn a_retry_after_longer_than_the_backoff_is_honoured() {
        billed_fixture();
        check("'acme', 'messages'");
        let id = claim(1, "1 minute")[0];
        run(&format!(
            "SELECT tally.fail_usage_report(id, lease_token, '429 rate_limit', retry_after => '2 minutes') FROM tally.usage_reports WHERE id = {id}"
        ));
        assert!((119.0..=121.0).contains(&delay(id)), "{}", delay(id));
        time_passes();
        let id = claim(1, "1 minute")[0];
        // Shorter than the backoff (20 s for a second attempt): the backoff wins.
        run(&format!(
            "SELECT tally.fail_usage_report(id, lease_token, '429 rate_limit', retry_after => '1 second') FROM tally.usage_reports WHERE id = {id}"
        ));
        assert!((19.0..=26.0).contains(&delay(id)), "{}", delay(id));
        assert_fails(
            &format!("SELECT tally.fail_usage_report(id, lease_token, 'x', retry_after => '-1 second') FROM tally.usage_reports WHERE id = {id}"),
            "22023",
            "retry_after must be a positive interval",
        );
    }

    #[pg_test]
    fn failed_reports_can_be_put_back_in_the_queue() {
        billed_fixture();
        for _ in 0..3 {
            check("'acme', 'messages'");
        }
        let ids = claim(3, "1 minute");
        for id in &ids {
            run(&format!(
                "SELECT tally.fail_usage_report(id, lease_token, 'resource_missing', true) FROM tally.usage_reports WHERE id = {id}"
            ));
        }
        assert_eq!(
            value::<i64>(&format!(
                "SELECT tally.requeue_failed_usage_reports(ARRAY[{}])",
                ids[0]
            )),
            Some(1)
        );
        assert_eq!(status(ids[0]), "pending/0");
        assert_eq!(claim(3, "1 minute"), vec![ids[0]]);
        assert_eq!(
            value::<i64>("SELECT tally.requeue_failed_usage_reports()"),
            Some(2)
        );
        // Only failed reports move; unknown ids are an error.
        assert_eq!(
            value::<i64>(&format!(
                "SELECT tally.requeue_failed_usage_reports(ARRAY[{}])",
                ids[0]
            )),
            Some(0)
        );
        assert_fails(
            "SELECT tally.requeue_failed_usage_reports(ARRAY[987654])",
            "P0002",
            "usage report not found",
        );
    }

    /// The token of a report's latest claim, as SQL text.
    fn token(id: i64) -> String {
        value::<String>(&format!(
            "SELECT lease_token::text FROM tally.usage_reports WHERE id = {id}"
        ))
        .unwrap_or_else(|| panic!("report {id} was never claimed"))
    }

    #[pg_test]
    fn a_lapsed_lease_cannot_settle_a_report_claimed_again() {
        billed_fixture();
        check("'acme', 'messages'");
        let id = claim(1, "1 minute")[0];
        let stale = token(id);
        run(&format!(
            "UPDATE tally.usage_reports SET lease_until = now() WHERE id = {id}"
        ));
        assert_eq!(claim(1, "1 minute"), vec![id]);
        let current = token(id);
        assert_ne!(stale, current);
        // The first worker's lease lapsed: it settles nothing.
        assert_fails(
            &format!("SELECT tally.complete_usage_report({id}, '{stale}')"),
            "55000",
            "usage report lease lost",
        );
        assert_fails(
            &format!("SELECT tally.fail_usage_report({id}, '{stale}', 'timeout')"),
            "55000",
            "usage report lease lost",
        );
        assert_fails(
            &format!("SELECT tally.fail_usage_report({id}, gen_random_uuid(), 'x', true)"),
            "55000",
            "usage report lease lost",
        );
        assert_eq!(status(id), "pending/2");
        run(&format!(
            "SELECT tally.complete_usage_report({id}, '{current}')"
        ));
        assert_eq!(status(id), "completed/2");
        // Completing a completed report changes nothing, whoever asks.
        run(&format!(
            "SELECT tally.complete_usage_report({id}, '{stale}')"
        ));
        assert_eq!(status(id), "completed/2");
    }

    #[pg_test]
    fn reports_are_settled_by_tenant_and_id() {
        billed_fixture();
        run("INSERT INTO tally.tenants (tenant_id) VALUES ('globex')");
        run("SELECT tally.link_provider_customer('globex', 'stripe', 'cus_globex')");
        check("'acme', 'messages'");
        check("'globex', 'messages'");
        let ids = claim(2, "1 minute");
        let (acme, globex) = (ids[0], ids[1]);
        let acme_token = token(acme);
        // Another tenant's report under this id: none, and nothing changes.
        assert_fails(
            &format!("SELECT tally.complete_usage_report('globex', {acme}, '{acme_token}')"),
            "P0002",
            "usage report not found",
        );
        assert_fails(
            &format!("SELECT tally.complete_usage_report('acme', {acme}, gen_random_uuid())"),
            "55000",
            "usage report lease lost",
        );
        assert_fails(
            &format!("SELECT tally.complete_usage_report(NULL, {acme}, '{acme_token}')"),
            "22004",
            "tenant_id must not be null",
        );
        assert_eq!(status(acme), "pending/1");
        run(&format!(
            "SELECT tally.complete_usage_report('acme', {acme}, '{acme_token}')"
        ));
        assert_eq!(status(acme), "completed/1");
        run(&format!(
            "SELECT tally.fail_usage_report('globex', {globex}, '{}', 'resource_missing', true)",
            token(globex)
        ));
        assert_eq!(status(globex), "failed/1");
    }

    #[pg_test]
    fn a_lease_that_lapsed_unclaimed_still_settles() {
        billed_fixture();
        check("'acme', 'messages'");
        let id = claim(1, "1 minute")[0];
        let mine = token(id);
        run(&format!(
            "UPDATE tally.usage_reports SET lease_until = now() - interval '1 second' WHERE id = {id}"
        ));
        // Nobody claimed it since: the slow worker's answer still counts.
        run(&format!(
            "SELECT tally.complete_usage_report({id}, '{mine}')"
        ));
        assert_eq!(status(id), "completed/1");
    }

    #[pg_test]
    fn each_claim_counts_a_send_that_requeueing_keeps() {
        billed_fixture();
        check("'acme', 'messages'");
        let sends = |id: i64| {
            value::<i32>(&format!(
                "SELECT sends FROM tally.usage_reports WHERE id = {id}"
            ))
            .unwrap()
        };
        let claimed_sends =
            value::<i32>("SELECT sends FROM tally.claim_usage_reports(1, '1 minute')");
        assert_eq!(claimed_sends, Some(1));
        let id = value::<i64>("SELECT id FROM tally.usage_reports").unwrap();
        let first = token(id);
        run(&format!(
            "SELECT tally.fail_usage_report({id}, '{first}', 'resource_missing', true)"
        ));
        run(&format!(
            "SELECT tally.requeue_failed_usage_reports(ARRAY[{id}])"
        ));
        assert_eq!((status(id), sends(id)), ("pending/0".to_string(), 1));
        assert_eq!(claim(1, "1 minute"), vec![id]);
        assert_eq!((status(id), sends(id)), ("pending/1".to_string(), 2));
        assert_ne!(token(id), first);
    }

    #[pg_test]
    fn a_retry_after_counts_up_to_an_hour() {
        billed_fixture();
        run("SET LOCAL tally.report_backoff_max = '1s'");
        check("'acme', 'messages'");
        for huge in ["100 years", "1000000 years"] {
            let id = claim(1, "1 minute")[0];
            run(&format!(
                "SELECT tally.fail_usage_report(id, lease_token, '429', retry_after => '{huge}') FROM tally.usage_reports WHERE id = {id}"
            ));
            // An hour, whatever the backoff's cap.
            assert!(
                (3_599.0..=3_601.0).contains(&delay(id)),
                "{huge}: {}",
                delay(id)
            );
            time_passes();
        }
    }

    #[pg_test]
    fn requeueing_a_report_first_claimed_a_day_ago_takes_an_explicit_decision() {
        billed_fixture();
        check("'acme', 'messages'");
        check("'acme', 'messages'");
        let ids = claim(2, "1 minute");
        for id in &ids {
            run(&format!(
                "SELECT tally.fail_usage_report(id, lease_token, 'resource_missing', true) FROM tally.usage_reports WHERE id = {id}"
            ));
        }
        run(&format!(
            "UPDATE tally.usage_reports SET first_claimed_at = now() - interval '25 hours' WHERE id = {}",
            ids[1]
        ));
        for sql in [
            format!(
                "SELECT tally.requeue_failed_usage_reports(ARRAY[{}])",
                ids[1]
            ),
            "SELECT tally.requeue_failed_usage_reports()".to_string(),
        ] {
            assert_fails(&sql, "55000", "usage reports may be billed twice");
            let (_, _, detail, _) = error_of(&sql).unwrap();
            assert!(
                detail.starts_with(&format!("usage report {} was first claimed", ids[1])),
                "{detail}"
            );
        }
        // A report first claimed within the day goes back as before.
        assert_eq!(
            value::<i64>(&format!(
                "SELECT tally.requeue_failed_usage_reports(ARRAY[{}])",
                ids[0]
            )),
            Some(1)
        );
        assert_eq!(
            value::<i64>(&format!(
                "SELECT tally.requeue_failed_usage_reports(ARRAY[{}], allow_resend_after_24h => true)",
                ids[1]
            )),
            Some(1)
        );
        assert_eq!(status(ids[1]), "pending/0");
        assert_fails(
            "SELECT tally.requeue_failed_usage_reports(NULL, NULL)",
            "22004",
            "allow_resend_after_24h must not be null",
        );
    }
}

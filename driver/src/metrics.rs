//! What `/metrics` reports, in Prometheus text format. One registry per
//! server, so several servers (as in the tests) never share counters.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: String,
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub provider: String,
    pub r#type: String,
    /// processed, duplicate, ignored, stale, conflict, unlinked, deferred or
    /// rejected.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

fn latency_histogram() -> Histogram {
    // 0.25 ms to about 4 s.
    Histogram::new(exponential_buckets(0.000_25, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub webhook_events: Family<WebhookLabels, Counter>,
    pub usage_checks: Family<OutcomeLabels, Counter>,
    pub plan_changes_blocked: Counter,
    pub pool_size: Gauge,
    pub pool_available: Gauge,
    pub report_sends: Family<OutcomeLabels, Counter>,
    pub report_send_seconds: Histogram,
    pub queue_pending: Gauge,
    pub queue_leased: Gauge,
    pub queue_failed: Gauge,
    pub queue_oldest_pending_seconds: Gauge<f64, AtomicU64>,
    pub alert_deliveries: Family<OutcomeLabels, Counter>,
    pub alert_delivery_seconds: Histogram,
    pub alert_queue_pending: Gauge,
    pub alert_queue_failed: Gauge,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tally");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            requests.clone(),
        );
        let request_seconds =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            request_seconds.clone(),
        );
        let webhook_events = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhook_events",
            "Provider webhook events by provider, type and outcome",
            webhook_events.clone(),
        );
        let usage_checks = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "usage_checks",
            "Usage checks through the API by outcome",
            usage_checks.clone(),
        );
        let plan_changes_blocked = Counter::default();
        registry.register(
            "plan_changes_blocked",
            "Plan validations that found the change invalid",
            plan_changes_blocked.clone(),
        );
        let pool_size = Gauge::default();
        registry.register(
            "db_pool_connections",
            "Database connections open",
            pool_size.clone(),
        );
        let pool_available = Gauge::default();
        registry.register(
            "db_pool_available",
            "Database connections open and idle",
            pool_available.clone(),
        );
        let report_sends = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "report_sends",
            "Usage reports sent to Stripe by outcome: sent, transient or permanent",
            report_sends.clone(),
        );
        let report_send_seconds = latency_histogram();
        registry.register(
            "report_send_duration_seconds",
            "Time to send one usage report to Stripe",
            report_send_seconds.clone(),
        );
        let queue_pending = Gauge::default();
        registry.register(
            "report_queue_pending",
            "Usage reports not sent yet",
            queue_pending.clone(),
        );
        let queue_leased = Gauge::default();
        registry.register(
            "report_queue_leased",
            "Usage reports a worker is sending now",
            queue_leased.clone(),
        );
        let queue_failed = Gauge::default();
        registry.register(
            "report_queue_failed",
            "Usage reports given up, kept for inspection",
            queue_failed.clone(),
        );
        let queue_oldest_pending_seconds = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "report_queue_oldest_pending_seconds",
            "Age of the oldest usage report not sent yet",
            queue_oldest_pending_seconds.clone(),
        );
        let alert_deliveries = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "alert_deliveries",
            "Threshold alert deliveries by outcome: delivered or failed (retried by the queue)",
            alert_deliveries.clone(),
        );
        let alert_delivery_seconds = latency_histogram();
        registry.register(
            "alert_delivery_duration_seconds",
            "Time to deliver one alert to every endpoint",
            alert_delivery_seconds.clone(),
        );
        let alert_queue_pending = Gauge::default();
        registry.register(
            "alert_queue_pending",
            "Threshold alerts not delivered yet",
            alert_queue_pending.clone(),
        );
        let alert_queue_failed = Gauge::default();
        registry.register(
            "alert_queue_failed",
            "Threshold alerts given up, kept for tallyd alerts retry",
            alert_queue_failed.clone(),
        );
        Metrics {
            registry,
            requests,
            request_seconds,
            webhook_events,
            usage_checks,
            plan_changes_blocked,
            pool_size,
            pool_available,
            report_sends,
            report_send_seconds,
            queue_pending,
            queue_leased,
            queue_failed,
            queue_oldest_pending_seconds,
            alert_deliveries,
            alert_delivery_seconds,
            alert_queue_pending,
            alert_queue_failed,
        }
    }

    pub fn webhook(&self, provider: &str, kind: &str, outcome: &str) {
        self.webhook_events
            .get_or_create(&WebhookLabels {
                provider: provider.into(),
                r#type: kind.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String");
        text
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

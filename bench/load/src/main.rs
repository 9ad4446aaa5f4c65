//! Fixed-rate load against tallyd, for bench/tallyd.sh. Requests start on a
//! schedule whatever the answers' speed, and each latency is measured from
//! the request's scheduled start, so a slow server cannot hide queueing
//! (no coordinated omission). Prints one JSON line of results.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use serde_json::json;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Scenario {
    /// `POST /v1/usage/<metric>/check` with an API key.
    Check,
    /// A new signed Stripe `invoice.paid` renewal each time, for a rotating
    /// set of linked customers.
    Webhooks,
    /// The same signed Stripe event again and again.
    Duplicates,
}

#[derive(Parser, Debug)]
struct Args {
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// tallyd's base URL.
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long)]
    rate: u32,
    /// Seconds of load.
    #[arg(long)]
    seconds: u64,
    /// API keys (check), comma-separated: requests take them in turn, so
    /// several keys spread the load over several tenants.
    #[arg(long, default_value = "", value_delimiter = ',')]
    key: Vec<String>,
    /// Metric (check).
    #[arg(long, default_value = "api_calls")]
    metric: String,
    /// Stripe webhook secret (webhooks, duplicates).
    #[arg(long, default_value = "")]
    secret: String,
    /// Customers cus_1 … cus_N to send webhooks for.
    #[arg(long, default_value_t = 1000)]
    customers: u32,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn request(args: &Args, http: &reqwest::Client, n: u64, run: u64) -> reqwest::RequestBuilder {
    match args.scenario {
        Scenario::Check => http
            .post(format!("{}/v1/usage/{}/check", args.url, args.metric))
            .bearer_auth(&args.key[n as usize % args.key.len()])
            .header("content-type", "application/json")
            .body(r#"{"units": 1}"#),
        Scenario::Webhooks | Scenario::Duplicates => {
            let id = match args.scenario {
                Scenario::Duplicates => format!("evt_dup_{run}"),
                _ => format!("evt_{run}_{n}"),
            };
            let customer = format!("cus_{}", n % u64::from(args.customers) + 1);
            let body =
                json!({"id": id, "object": "event", "type": "invoice.paid", "created": unix_now(),
                              "data": {"object": {"customer": customer, "billing_reason": "subscription_cycle",
                                                  "lines": {"data": [{"period": {"start": unix_now(), "end": unix_now() + 2_592_000}}]}}}})
                .to_string();
            let signature =
                tallyd::signature::sign_stripe(&args.secret, unix_now(), body.as_bytes());
            http.post(format!("{}/webhooks/stripe", args.url))
                .header("Stripe-Signature", signature)
                .header("content-type", "application/json")
                .body(body)
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()
        .expect("HTTP client");
    let run = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let total = args.seconds * u64::from(args.rate);
    let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let request = request(&args, &http, n, run);
        tasks.push(tokio::spawn(async move {
            let response = request.send().await;
            let ok = response.as_ref().is_ok_and(|r| r.status().is_success());
            if let Ok(response) = response {
                let _ = response.bytes().await;
            }
            (scheduled.elapsed().as_secs_f64() * 1000.0, ok)
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut errors = 0;
    for task in tasks {
        let (ms, ok) = task.await.expect("request task");
        latencies.push(ms);
        if !ok {
            errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    println!(
        "{}",
        json!({
            "scenario": format!("{:?}", args.scenario).to_lowercase(),
            "requests": latencies.len(),
            "errors": errors,
            "rate": latencies.len() as f64 / elapsed,
            "p50_ms": percentile(&latencies, 0.50),
            "p90_ms": percentile(&latencies, 0.90),
            "p99_ms": percentile(&latencies, 0.99),
            "max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        })
    );
}

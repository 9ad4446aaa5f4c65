//! `fake-stripe`: the local fake of Stripe's meter-event endpoint, as a
//! program, for the demo and the benchmarks. Serves until SIGTERM or ctrl-c.

use std::collections::HashSet;
use std::time::Duration;

use clap::Parser;
use tally_tests::fake_stripe::{FakeStripe, Faults};

#[derive(Parser)]
#[command(about = "A local fake of Stripe's POST /v1/billing/meter_events")]
struct Args {
    #[arg(long, default_value = "127.0.0.1:12111")]
    listen: std::net::SocketAddr,
    /// The secret key clients must send.
    #[arg(long, default_value = "sk_test_fake")]
    secret_key: String,
    /// Share of requests answered 500.
    #[arg(long, default_value_t = 0.0)]
    server_errors: f64,
    /// Share of requests answered 429 with Retry-After.
    #[arg(long, default_value_t = 0.0)]
    rate_limited: f64,
    #[arg(long, default_value_t = 1)]
    retry_after: u64,
    /// Share of requests whose connection is dropped after recording.
    #[arg(long, default_value_t = 0.0)]
    dropped: f64,
    /// Delay of every answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Customers answered 400 resource_missing (repeatable).
    #[arg(long)]
    unknown_customer: Vec<String>,
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let faults = Faults {
        server_errors: args.server_errors,
        rate_limited: args.rate_limited,
        retry_after_seconds: args.retry_after,
        dropped: args.dropped,
        delay: Duration::from_millis(args.delay_ms),
        unknown_customers: args.unknown_customer.into_iter().collect::<HashSet<_>>(),
        ..Faults::default()
    };
    let fake = FakeStripe::start_on(args.listen, &args.secret_key, faults, args.seed).await;
    eprintln!("fake Stripe listening on {}", fake.base_url);
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!(
        "fake Stripe: {} requests, {} events counted",
        fake.requests(),
        fake.events().len()
    );
}

//! Sending usage reports to Stripe as Billing Meter events.
//!
//! The request is async-stripe's typed `CreateBillingMeterEvent`; the HTTP
//! transport is ours ([`MeterClient`], an async-stripe `StripeClient`) so
//! that a failure keeps what the worker needs to classify it: the status,
//! Stripe's error code and message, and `Retry-After`.
//!
//! Each report keeps one `identifier` for all its attempts (Stripe counts a
//! meter event once per identifier), while each send has an idempotency
//! key of its own, `<identifier>:s<sends>` from the report's send count,
//! which the queue never resets: Stripe v1 replays the saved response of a
//! key, errors included, so reusing one key would repeat an error for a day
//! (a report requeued after its customer was fixed would fail again).
//!
//! What Stripe says is bounded before it is used: `Retry-After` (seconds or
//! an HTTP date) counts for [`MAX_RETRY_AFTER`] at most, and at most
//! [`MAX_BODY_BYTES`] of an answer are read.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use stripe_billing::billing_meter_event::CreateBillingMeterEvent;
use stripe_client_core::{
    CustomizedStripeRequest, IdempotencyKey, RequestStrategy, StripeClient, StripeClientErr,
    StripeMethod, StripeRequest,
};

/// Stripe accepts meter events from the past 35 days.
pub const MAX_AGE: chrono::TimeDelta = chrono::TimeDelta::days(35);

/// The longest `Retry-After` believed, an hour, which the SQL API
/// applies to a `retry_after` too.
pub const MAX_RETRY_AFTER: Duration = Duration::from_millis(tally_rules::MAX_RETRY_AFTER_MS as u64);

/// The most of an answer read from Stripe (its errors are a few hundred
/// bytes); the rest is not read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A `Retry-After` header: delay-seconds or an HTTP date (IMF-fixdate, as
/// HTTP/1.1 sends it), as a wait from `now` of at most [`MAX_RETRY_AFTER`].
/// Anything else is ignored.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    let wait = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is a very long wait, not garbage.
        Duration::from_secs(value.parse::<u64>().unwrap_or(u64::MAX))
    } else {
        let at = DateTime::parse_from_rfc2822(value).ok()?;
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// At most `limit` bytes of a response's body, and whether there was more
/// (which is left unread).
async fn read_at_most(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = limit - body.len();
        if chunk.len() > room {
            body.extend_from_slice(&chunk[..room]);
            return Ok((body, true));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, false))
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    /// Stripe answered with an error status.
    Stripe {
        status: u16,
        code: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// No answer: connection refused or dropped, or the timeout passed.
    Network(String),
    /// A 2xx answer whose body could not be read.
    Decode(String),
}

impl StripeClientErr for SendError {
    fn deserialize_err(message: impl std::fmt::Display) -> Self {
        SendError::Decode(message.to_string())
    }
}

/// A Stripe API client over reqwest. Debug never shows the secret key.
#[derive(Clone)]
pub struct MeterClient {
    http: reqwest::Client,
    /// Like `https://api.stripe.com/`: requests go to `<base>v1<path>`.
    api_base: String,
    secret_key: String,
}

impl std::fmt::Debug for MeterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeterClient")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

/// Refuse a Stripe address that is not `https://`, unless its host is a
/// loopback address or `localhost`.
fn check_api_base(api_base: &str) -> anyhow::Result<()> {
    let url = reqwest::Url::parse(api_base)
        .map_err(|error| anyhow::anyhow!("STRIPE_API_BASE {api_base:?} is not a URL: {error}"))?;
    // An IPv6 host comes bracketed: `[::1]`.
    let host = url.host_str().unwrap_or("");
    let local = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if url.scheme() != "https" && !local {
        anyhow::bail!(
            "STRIPE_API_BASE {api_base:?} is not https://: only a loopback address may use plain http"
        );
    }
    Ok(())
}

impl MeterClient {
    /// A client for Stripe at `api_base`, which must be `https://` unless it
    /// is on this machine (a local fake): the secret key travels with every
    /// request.
    pub fn new(secret_key: &str, api_base: &str, timeout: Duration) -> anyhow::Result<MeterClient> {
        check_api_base(api_base)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(concat!("tallyd/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let api_base = if api_base.ends_with('/') {
            api_base.to_string()
        } else {
            format!("{api_base}/")
        };
        Ok(MeterClient {
            http,
            api_base,
            secret_key: secret_key.to_string(),
        })
    }

    async fn post(&self, request: CustomizedStripeRequest) -> Result<Bytes, SendError> {
        let (request, config) = request.into_pieces();
        let method = match request.method {
            StripeMethod::Post => reqwest::Method::POST,
            StripeMethod::Get => reqwest::Method::GET,
            StripeMethod::Delete => reqwest::Method::DELETE,
        };
        let mut url = format!("{}v1{}", self.api_base, request.path);
        if let Some(query) = request.query {
            url = format!("{url}?{query}");
        }
        let mut http = self
            .http
            .request(method, url)
            .bearer_auth(&self.secret_key)
            .header("stripe-version", stripe_shared::version::VERSION.as_str());
        if let Some(key) = config
            .request_strategy
            .and_then(|strategy| strategy.get_key())
        {
            http = http.header("idempotency-key", key.as_str());
        }
        if let Some(body) = request.body {
            http = http
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = http
            .send()
            .await
            .map_err(|error| SendError::Network(describe(&error)))?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, Utc::now()));
        let (body, cut) = read_at_most(response, MAX_BODY_BYTES)
            .await
            .map_err(|error| SendError::Network(describe(&error)))?;
        if status.is_success() {
            return Ok(Bytes::from(body));
        }
        if cut {
            tracing::warn!(
                status = status.as_u16(),
                "Stripe's answer is longer than {MAX_BODY_BYTES} bytes: the rest was not read"
            );
        }
        let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        Err(SendError::Stripe {
            status: status.as_u16(),
            code: error
                .pointer("/error/code")
                .and_then(|v| v.as_str())
                .map(str::to_string),
            message: error
                .pointer("/error/message")
                .and_then(|v| v.as_str())
                .unwrap_or_else(|| status.canonical_reason().unwrap_or("error"))
                .to_string(),
            retry_after,
        })
    }
}

/// reqwest's error, without the URL (which is ours, not secret, but noisy).
fn describe(error: &reqwest::Error) -> String {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    let mut source = std::error::Error::source(error);
    let mut detail = String::new();
    while let Some(cause) = source {
        detail = cause.to_string();
        source = cause.source();
    }
    if detail.is_empty() {
        what.to_string()
    } else {
        format!("{what}: {detail}")
    }
}

impl StripeClient for MeterClient {
    type Err = SendError;

    fn execute(
        &self,
        request: CustomizedStripeRequest,
    ) -> impl std::future::Future<Output = Result<Bytes, SendError>> + Send {
        self.post(request)
    }
}

/// A usage report as claimed from the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: i64,
    pub tenant_id: String,
    pub event_name: String,
    pub units: i64,
    pub identifier: String,
    pub stripe_customer_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
    /// The claim's lease token: completing or failing the report takes it.
    pub lease_token: String,
    /// Claims of the report ever made, this one included; never reset.
    pub sends: i32,
}

/// What to record for a report after trying to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Sent,
    /// Try again later (no sooner than `retry_after`, if Stripe said so).
    Transient {
        error: String,
        retry_after: Option<Duration>,
    },
    /// Never going to work: the report is marked failed, the queue moves on.
    Permanent {
        error: String,
    },
}

/// What can be decided without asking Stripe: the verdict, or else the
/// Stripe customer to send the report for.
pub fn precheck(report: &Report, now: DateTime<Utc>) -> Result<&str, Verdict> {
    if now - report.created_at > MAX_AGE {
        return Err(Verdict::Permanent {
            error: format!(
                "usage from {} is older than the 35 days Stripe accepts",
                report.created_at.format("%Y-%m-%d %H:%M UTC")
            ),
        });
    }
    report
        .stripe_customer_id
        .as_deref()
        .ok_or_else(|| Verdict::Transient {
            error: format!(
                "tenant {:?} has no Stripe customer linked yet",
                report.tenant_id
            ),
            retry_after: None,
        })
}

/// 2xx: sent. 408, 409, 429, 5xx and no answer: transient. Any other 4xx:
/// permanent, with Stripe's code and message.
pub fn classify(result: &Result<(), SendError>) -> Verdict {
    match result {
        Ok(()) => Verdict::Sent,
        // Stripe took it (2xx); only its answer was unreadable.
        Err(SendError::Decode(_)) => Verdict::Sent,
        Err(SendError::Network(error)) => Verdict::Transient {
            error: format!("no answer from Stripe: {error}"),
            retry_after: None,
        },
        Err(SendError::Stripe {
            status,
            code,
            message,
            retry_after,
        }) => {
            let error = match code {
                Some(code) => format!("stripe {status} {code}: {message}"),
                None => format!("stripe {status}: {message}"),
            };
            match status {
                408 | 409 | 429 | 500..=599 => Verdict::Transient {
                    error,
                    retry_after: *retry_after,
                },
                _ => Verdict::Permanent { error },
            }
        }
    }
}

/// The meter event for a report, and the idempotency key of this send.
pub fn meter_event(report: &Report, customer: &str) -> (CreateBillingMeterEvent, IdempotencyKey) {
    let payload = HashMap::from([
        ("stripe_customer_id".to_string(), customer.to_string()),
        ("value".to_string(), report.units.to_string()),
    ]);
    let event = CreateBillingMeterEvent::new(report.event_name.as_str(), payload)
        .identifier(report.identifier.as_str())
        .timestamp(report.created_at.timestamp());
    // `s` keeps these apart from the keys of tally 0.7.0 and older,
    // `<identifier>:<attempt>`.
    let key = IdempotencyKey::new(format!("{}:s{}", report.identifier, report.sends))
        .expect("an identifier and a number make a valid key");
    (event, key)
}

/// Send one report for `customer` (from [`precheck`]); says what to record.
pub async fn send(client: &MeterClient, report: &Report, customer: &str) -> Verdict {
    let (event, key) = meter_event(report, customer);
    let result = event
        .customize()
        .request_strategy(RequestStrategy::Idempotent(key))
        .send(client)
        .await
        .map(|_| ());
    classify(&result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_reaches_only_this_machine() {
        for base in [
            "https://api.stripe.com/",
            "http://127.0.0.1:12111/",
            "http://127.8.0.1/",
            "http://localhost:1/",
            "http://[::1]:8080",
        ] {
            assert!(check_api_base(base).is_ok(), "{base}");
        }
        for base in [
            "http://api.stripe.com/",
            "http://10.0.0.1/",
            "ftp://localhost.evil/",
            "nonsense",
        ] {
            assert!(check_api_base(base).is_err(), "{base}");
        }
    }

    fn report() -> Report {
        Report {
            id: 7,
            tenant_id: "acme".into(),
            event_name: "api_calls".into(),
            units: 3,
            identifier: "0d6c0b9e-0000-4000-8000-000000000007".into(),
            stripe_customer_id: Some("cus_acme".into()),
            created_at: Utc::now(),
            attempts: 2,
            lease_token: "5d9e2f1c-0000-4000-8000-000000000001".into(),
            sends: 4,
        }
    }

    fn stripe_error(status: u16, retry_after: Option<u64>) -> Result<(), SendError> {
        Err(SendError::Stripe {
            status,
            code: Some("some_code".into()),
            message: "said Stripe".into(),
            retry_after: retry_after.map(Duration::from_secs),
        })
    }

    #[test]
    fn statuses_are_classified_as_stripe_documents_them() {
        assert_eq!(classify(&Ok(())), Verdict::Sent);
        for status in [408, 409, 429, 500, 502, 503] {
            assert!(
                matches!(
                    classify(&stripe_error(status, None)),
                    Verdict::Transient { .. }
                ),
                "{status}"
            );
        }
        for status in [400, 401, 402, 403, 404] {
            assert!(
                matches!(
                    classify(&stripe_error(status, None)),
                    Verdict::Permanent { .. }
                ),
                "{status}"
            );
        }
        assert_eq!(
            classify(&stripe_error(400, None)),
            Verdict::Permanent {
                error: "stripe 400 some_code: said Stripe".into()
            }
        );
        assert_eq!(
            classify(&stripe_error(429, Some(7))),
            Verdict::Transient {
                error: "stripe 429 some_code: said Stripe".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        assert!(matches!(
            classify(&Err(SendError::Network("reset".into()))),
            Verdict::Transient { .. }
        ));
        assert_eq!(
            classify(&Err(SendError::Decode("odd body".into()))),
            Verdict::Sent
        );
    }

    #[test]
    fn old_usage_is_permanent_and_a_missing_customer_transient() {
        let now = Utc::now();
        assert_eq!(precheck(&report(), now), Ok("cus_acme"));
        let old = Report {
            created_at: now - chrono::TimeDelta::days(36),
            ..report()
        };
        assert!(matches!(
            precheck(&old, now),
            Err(Verdict::Permanent { .. })
        ));
        let unlinked = Report {
            stripe_customer_id: None,
            ..report()
        };
        assert!(matches!(
            precheck(&unlinked, now),
            Err(Verdict::Transient { .. })
        ));
    }

    #[test]
    fn the_identifier_is_stable_and_the_idempotency_key_is_per_send() {
        let (event, key) = meter_event(&report(), "cus_acme");
        let body = event.build().body.unwrap();
        for field in [
            "event_name=api_calls",
            "identifier=0d6c0b9e-0000-4000-8000-000000000007",
            "payload[stripe_customer_id]=cus_acme",
            "payload[value]=3",
        ] {
            assert!(
                body.replace("%5B", "[").replace("%5D", "]").contains(field),
                "{field} missing from {body}"
            );
        }
        assert_eq!(key.as_str(), "0d6c0b9e-0000-4000-8000-000000000007:s4");
        // A requeued report starts its attempts again, never its sends.
        let (_, next) = meter_event(
            &Report {
                attempts: 1,
                sends: 5,
                ..report()
            },
            "cus_acme",
        );
        assert_eq!(next.as_str(), "0d6c0b9e-0000-4000-8000-000000000007:s5");
    }

    #[test]
    fn retry_after_is_bounded_and_garbage_is_ignored() {
        let now = DateTime::parse_from_rfc3339("2026-12-03T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let cases = [
            ("30", Some(Duration::from_secs(30))),
            (" 0 ", Some(Duration::ZERO)),
            ("3600", Some(MAX_RETRY_AFTER)),
            ("3601", Some(MAX_RETRY_AFTER)),
            ("18446744073709551615", Some(MAX_RETRY_AFTER)),
            ("99999999999999999999999999", Some(MAX_RETRY_AFTER)),
            (
                "Thu, 03 Dec 2026 12:02:00 GMT",
                Some(Duration::from_secs(120)),
            ),
            ("Tue, 01 Jan 2126 00:00:00 GMT", Some(MAX_RETRY_AFTER)),
            // A date gone by: retry now.
            ("Thu, 03 Dec 2026 11:00:00 GMT", Some(Duration::ZERO)),
            ("-5", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }

    #[test]
    fn the_client_never_shows_its_key() {
        let client = MeterClient::new(
            "sk_live_secret",
            "http://127.0.0.1:1",
            Duration::from_secs(1),
        )
        .unwrap();
        assert!(!format!("{client:?}").contains("sk_live"));
    }
}

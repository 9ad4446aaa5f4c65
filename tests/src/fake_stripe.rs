//! A local fake of Stripe's meter-event endpoint, `POST /v1/billing/meter_events`,
//! speaking its wire format: a form-encoded body, `Authorization: Bearer`,
//! Stripe-shaped JSON errors, `Idempotency-Key` (the first response saved
//! and replayed, 500s included, as Stripe v1 does; a key reused with other
//! parameters is an `idempotency_error`), and events counted once per
//! `identifier`. Faults can be injected: 500s, 429s with `Retry-After`,
//! customers Stripe does not know, customers answered 429 with any
//! `Retry-After` (garbage and absurd values included), slow answers and
//! dropped connections.
//!
//! It stands in for Stripe's servers only: the code under test is tallyd's
//! real client. `GET /_fake/events` lists what it counted; `GET
//! /_fake/stats` counts requests and events.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Faults to inject; all off by default.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Customers whose events are answered `500` with a Stripe error
    /// followed by whitespace that never ends (nothing recorded).
    pub endless_answers: HashSet<String>,
    /// Customers whose events are always answered `429` with this
    /// `Retry-After` header value, verbatim (nothing recorded).
    pub throttled: HashMap<String, String>,
    /// Share of requests answered `500 api_error` (nothing recorded).
    pub server_errors: f64,
    /// Share of requests answered `429` with `Retry-After` (nothing recorded).
    pub rate_limited: f64,
    /// The `Retry-After` of those 429s, in seconds.
    pub retry_after_seconds: u64,
    /// Share of requests whose connection is dropped without an answer,
    /// after the event was recorded (the client cannot tell).
    pub dropped: f64,
    /// Every answer waits this long, after the event was recorded.
    pub delay: Duration,
    /// Customers answered `400 resource_missing`.
    pub unknown_customers: HashSet<String>,
}

/// A meter event as the fake counted it.
#[derive(Debug, Clone, PartialEq)]
pub struct MeterEvent {
    pub identifier: String,
    pub event_name: String,
    pub customer: String,
    pub value: i64,
    pub timestamp: i64,
    /// Unix time in milliseconds when the fake first received it.
    pub received_ms: u128,
}

struct Saved {
    params: String,
    status: StatusCode,
    body: String,
}

struct State {
    faults: Faults,
    events: Vec<MeterEvent>,
    by_identifier: HashMap<String, usize>,
    saved: HashMap<String, Saved>,
    requests: u64,
    by_identifier_requests: HashMap<String, u64>,
    rng: StdRng,
}

#[derive(Clone)]
pub struct FakeStripe {
    pub base_url: String,
    secret_key: String,
    state: Arc<Mutex<State>>,
    shutdown: CancellationToken,
}

enum Answer {
    Respond(StatusCode, String, Vec<(&'static str, String)>),
    /// A 500 whose body is this, then spaces without end.
    Endless(String),
    Drop,
}

/// A body that starts with `head` and then sends spaces until the client
/// hangs up.
struct EndlessBody {
    head: Option<Bytes>,
}

impl hyper::body::Body for EndlessBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, std::io::Error>>> {
        let chunk = self
            .head
            .take()
            .unwrap_or_else(|| Bytes::from(vec![b' '; 16 * 1024]));
        std::task::Poll::Ready(Some(Ok(hyper::body::Frame::data(chunk))))
    }
}

fn stripe_error(status: StatusCode, kind: &str, code: Option<&str>, message: &str) -> Answer {
    let mut error = json!({"type": kind, "message": message});
    if let Some(code) = code {
        error["code"] = json!(code);
        error["doc_url"] = json!(format!("https://stripe.com/docs/error-codes/{code}"));
    }
    Answer::Respond(status, json!({ "error": error }).to_string(), vec![])
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

impl FakeStripe {
    /// Serve on 127.0.0.1, a port of its own.
    pub async fn start(secret_key: &str, faults: Faults) -> FakeStripe {
        FakeStripe::start_on("127.0.0.1:0".parse().unwrap(), secret_key, faults, 42).await
    }

    pub async fn start_on(
        address: SocketAddr,
        secret_key: &str,
        faults: Faults,
        seed: u64,
    ) -> FakeStripe {
        let listener = TcpListener::bind(address)
            .await
            .expect("bind the fake Stripe");
        let fake = FakeStripe {
            base_url: format!("http://{}/", listener.local_addr().unwrap()),
            secret_key: secret_key.to_string(),
            state: Arc::new(Mutex::new(State {
                faults,
                events: Vec::new(),
                by_identifier: HashMap::new(),
                saved: HashMap::new(),
                requests: 0,
                by_identifier_requests: HashMap::new(),
                rng: StdRng::seed_from_u64(seed),
            })),
            shutdown: CancellationToken::new(),
        };
        let server = fake.clone();
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    _ = server.shutdown.cancelled() => return,
                };
                let server = server.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let server = server.clone();
                        async move { server.handle(request).await }
                    });
                    // A dropped connection ends here, by design.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        fake
    }

    pub fn set_faults(&self, faults: Faults) {
        self.state.lock().unwrap().faults = faults;
    }

    /// Events counted, each identifier once, in the order first received.
    pub fn events(&self) -> Vec<MeterEvent> {
        self.state.lock().unwrap().events.clone()
    }

    /// Units counted per customer.
    pub fn units_by_customer(&self) -> HashMap<String, i64> {
        let mut units = HashMap::new();
        for event in self.events() {
            *units.entry(event.customer).or_insert(0) += event.value;
        }
        units
    }

    /// Requests received on the meter-event endpoint, answered or not.
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    /// Requests received on the meter-event endpoint per identifier,
    /// answered or not, replays included.
    pub fn requests_by_identifier(&self) -> HashMap<String, u64> {
        self.state.lock().unwrap().by_identifier_requests.clone()
    }

    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    async fn handle(
        &self,
        request: Request<Incoming>,
    ) -> Result<Response<BoxBody<Bytes, std::io::Error>>, std::io::Error> {
        let (parts, body) = request.into_parts();
        let body = body
            .collect()
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        let path = parts.uri.path().to_string();
        let answer = if parts.method == hyper::Method::GET && path == "/_fake/stats" {
            let stats = json!({"requests": self.requests(), "events": self.events().len()});
            Answer::Respond(StatusCode::OK, stats.to_string(), vec![])
        } else if parts.method == hyper::Method::GET && path == "/_fake/events" {
            let events: Vec<Value> = self
                .events()
                .iter()
                .map(|e| {
                    json!({"identifier": e.identifier, "customer": e.customer, "value": e.value,
                                "timestamp": e.timestamp, "received_ms": e.received_ms as u64})
                })
                .collect();
            Answer::Respond(StatusCode::OK, Value::Array(events).to_string(), vec![])
        } else if parts.method != hyper::Method::POST || path != "/v1/billing/meter_events" {
            let message = format!("Unrecognized request URL ({}: {path}).", parts.method);
            stripe_error(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                None,
                &message,
            )
        } else {
            let header = |name: &str| {
                parts
                    .headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            self.meter_event(header("authorization"), header("idempotency-key"), &body)
                .await
        };
        match answer {
            Answer::Drop => Err(std::io::Error::other("connection dropped on purpose")),
            Answer::Endless(head) => Ok(Response::builder()
                .status(StatusCode::INTERNAL_SERVER_ERROR)
                .header("content-type", "application/json")
                .body(BoxBody::new(EndlessBody {
                    head: Some(Bytes::from(head)),
                }))
                .unwrap()),
            Answer::Respond(status, body, headers) => {
                let mut response = Response::builder()
                    .status(status)
                    .header("content-type", "application/json");
                response = response.header("request-id", format!("req_{}", now_ms()));
                for (name, value) in headers {
                    response = response.header(name, value);
                }
                let body = Full::new(Bytes::from(body)).map_err(|never| match never {});
                Ok(response.body(BoxBody::new(body)).unwrap())
            }
        }
    }

    async fn meter_event(
        &self,
        authorization: Option<String>,
        key: Option<String>,
        body: &[u8],
    ) -> Answer {
        if authorization.as_deref() != Some(&format!("Bearer {}", self.secret_key)) {
            return stripe_error(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                None,
                "Invalid API Key provided.",
            );
        }
        let params: Vec<(String, String)> = serde_urlencoded::from_bytes(body).unwrap_or_default();
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let canonical = {
            let mut sorted = params.clone();
            sorted.sort();
            serde_urlencoded::to_string(sorted).unwrap_or_default()
        };
        let (answer, delay) = {
            let mut state = self.state.lock().unwrap();
            state.requests += 1;
            if let Some(identifier) = param("identifier") {
                *state.by_identifier_requests.entry(identifier).or_insert(0) += 1;
            }
            if let Some(saved) = key.as_ref().and_then(|key| state.saved.get(key)) {
                let answer = if saved.params == canonical {
                    Answer::Respond(
                        saved.status,
                        saved.body.clone(),
                        vec![("idempotent-replayed", "true".into())],
                    )
                } else {
                    let message = format!(
                        "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{}' if you meant to execute a different request.",
                        key.as_deref().unwrap_or_default()
                    );
                    stripe_error(StatusCode::BAD_REQUEST, "idempotency_error", None, &message)
                };
                return answer;
            }
            let faults = state.faults.clone();
            let throttled = param("payload[stripe_customer_id]")
                .and_then(|customer| faults.throttled.get(&customer).cloned());
            if param("payload[stripe_customer_id]")
                .is_some_and(|customer| faults.endless_answers.contains(&customer))
            {
                return Answer::Endless(
                    json!({"error": {"type": "api_error", "message": "An unknown error occurred."}})
                        .to_string(),
                );
            }
            if let Some(retry_after) = throttled {
                return Answer::Respond(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": {"type": "invalid_request_error", "code": "rate_limit",
                                     "message": "Too many requests hit the API too quickly."}})
                    .to_string(),
                    vec![("retry-after", retry_after)],
                );
            }
            if state.rng.gen_bool(faults.rate_limited.clamp(0.0, 1.0)) {
                // Turned away before execution: nothing saved for the key.
                return Answer::Respond(
                    StatusCode::TOO_MANY_REQUESTS,
                    json!({"error": {"type": "invalid_request_error", "code": "rate_limit",
                                     "message": "Too many requests hit the API too quickly."}})
                    .to_string(),
                    vec![("retry-after", faults.retry_after_seconds.to_string())],
                );
            }
            let (event_name, customer, value, identifier) = (
                param("event_name"),
                param("payload[stripe_customer_id]"),
                param("payload[value]").and_then(|v| v.parse::<i64>().ok()),
                param("identifier").unwrap_or_else(|| format!("gen_{}", now_ms())),
            );
            let timestamp = param("timestamp")
                .and_then(|t| t.parse::<i64>().ok())
                .unwrap_or((now_ms() / 1000) as i64);
            let answer = match (event_name, customer, value) {
                (None, ..) => stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    "Missing required param: event_name.",
                ),
                (_, None, _) | (_, _, None) => stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_missing"),
                    "The payload must contain stripe_customer_id and a numeric value.",
                ),
                (_, Some(customer), _) if faults.unknown_customers.contains(&customer) => {
                    stripe_error(
                        StatusCode::BAD_REQUEST,
                        "invalid_request_error",
                        Some("resource_missing"),
                        &format!("No such customer: '{customer}'"),
                    )
                }
                _ if (now_ms() / 1000) as i64 - timestamp > 35 * 86_400 => stripe_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request_error",
                    Some("parameter_invalid_integer"),
                    "Timestamp must be within the past 35 calendar days.",
                ),
                _ if state.rng.gen_bool(faults.server_errors.clamp(0.0, 1.0)) => stripe_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "api_error",
                    None,
                    "An unknown error occurred.",
                ),
                (Some(event_name), Some(customer), Some(value)) => {
                    if !state.by_identifier.contains_key(&identifier) {
                        let index = state.events.len();
                        state.by_identifier.insert(identifier.clone(), index);
                        state.events.push(MeterEvent {
                            identifier: identifier.clone(),
                            event_name: event_name.clone(),
                            customer: customer.clone(),
                            value,
                            timestamp,
                            received_ms: now_ms(),
                        });
                    }
                    let body = json!({"object": "billing.meter_event", "created": now_ms() / 1000, "event_name": event_name,
                                      "identifier": identifier, "livemode": false, "timestamp": timestamp,
                                      "payload": {"stripe_customer_id": customer, "value": value.to_string()}});
                    Answer::Respond(StatusCode::OK, body.to_string(), vec![])
                }
            };
            // Executed: the answer is the key's for good, errors included.
            if let (Some(key), Answer::Respond(status, body, _)) = (&key, &answer) {
                state.saved.insert(
                    key.clone(),
                    Saved {
                        params: canonical,
                        status: *status,
                        body: body.clone(),
                    },
                );
            }
            let dropped = matches!(&answer, Answer::Respond(StatusCode::OK, ..))
                && state.rng.gen_bool(faults.dropped.clamp(0.0, 1.0));
            (if dropped { Answer::Drop } else { answer }, faults.delay)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        answer
    }
}

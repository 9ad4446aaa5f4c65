//! The tenant API. The tenant comes only from the API key: no request can
//! name, read or change another tenant's data.

use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{parse_json, read_body, ApiError, AppState, TenantSlot};
use crate::api_keys;
use crate::db::tenant_api as db;
use crate::db::PooledClient;
use crate::metrics::OutcomeLabels;

/// An authenticated request: the key's tenant, and the connection that
/// looked it up, reused for the request itself, held with one of the
/// tenant's slots (its share of the pool).
pub struct Authed {
    tenant_id: String,
    client: PooledClient,
    _slot: TenantSlot,
}

/// The API key in a request's `Authorization` header; 401 without one
/// (before anything touches the database).
fn api_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    api_keys::from_authorization(header)
        .map(str::to_string)
        .ok_or_else(ApiError::unauthorized)
}

impl Authed {
    /// Take a connection and look the key up: one indexed lookup, so a
    /// request with a wrong key costs no more than that.
    async fn for_key(state: &AppState, key: &str) -> Result<Authed, ApiError> {
        let client = state.client().await?;
        let tenant_id = match db::tenant_for_key(&client, &api_keys::hash(key)).await {
            Ok(Some(tenant_id)) => tenant_id,
            Ok(None) => return Err(ApiError::unauthorized()),
            Err(error) => return Err(ApiError::from_db("looking up an API key", error)),
        };
        if let Some(slot) = state.tenant_slots.try_take(&tenant_id) {
            return Ok(Authed {
                tenant_id,
                client,
                _slot: slot,
            });
        }
        // The tenant holds its share already: wait for a slot of its own
        // without holding a connection another tenant could use.
        drop(client);
        let slot = state
            .tenant_slots
            .take(&tenant_id, state.timeouts.pool_wait)
            .await?;
        let client = state.client().await?;
        Ok(Authed {
            tenant_id,
            client,
            _slot: slot,
        })
    }
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Authed, ApiError> {
        let key = api_key(&parts.headers)?;
        Authed::for_key(state, &key).await
    }
}

/// An authenticated request with a JSON body. The body is read first,
/// under its size and time limits, and only then is a connection taken: a
/// client whose body is slow or never comes holds no database connection.
pub struct AuthedJson<T> {
    authed: Authed,
    body: T,
}

impl<T: DeserializeOwned> FromRequest<AppState> for AuthedJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        let key = api_key(request.headers())?;
        let bytes = read_body(request, state).await?;
        let authed = Authed::for_key(state, &key).await?;
        let body = parse_json(&bytes)?;
        Ok(AuthedJson { authed, body })
    }
}

/// The `{metric}` of a path, with bytes that are not UTF-8 answered in the
/// API's shape (400).
pub struct Metric(String);

impl FromRequestParts<AppState> for Metric {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Metric, ApiError> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(metric)| Metric(metric))
            .map_err(|rejection| ApiError::bad_request("invalid_request", rejection.body_text()))
    }
}

/// The `Idempotency-Key` header, if any; 400 when it is not printable ASCII.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    headers
        .get("idempotency-key")
        .map(|value| {
            value.to_str().map_err(|_| {
                ApiError::bad_request(
                    "invalid_request",
                    "the Idempotency-Key header must be printable ASCII",
                )
            })
        })
        .transpose()
}

fn one() -> i64 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Units {
    #[serde(default = "one")]
    units: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    plan_id: String,
}

/// `POST /v1/usage/{metric}/check`, body `{"units": n}` (default 1), optional
/// `Idempotency-Key` header. 200 whether allowed or not: the body says. The
/// same key with another metric or other units is 422
/// `idempotency_key_reused`.
pub async fn check(
    State(state): State<AppState>,
    Metric(metric): Metric,
    headers: HeaderMap,
    request: AuthedJson<Units>,
) -> Result<Json<db::Check>, ApiError> {
    let key = idempotency_key(&headers)?;
    let AuthedJson { authed, body } = request;
    let check = db::check(&authed.client, &authed.tenant_id, &metric, body.units, key)
        .await
        .map_err(|error| ApiError::from_db("checking usage", error))?;
    let outcome = check.reason.clone().unwrap_or_else(|| "allowed".into());
    state
        .metrics
        .usage_checks
        .get_or_create(&OutcomeLabels { outcome })
        .inc();
    Ok(Json(check))
}

/// `POST /v1/usage/{metric}/decrement`, body `{"units": n}` (default 1),
/// `Idempotency-Key` header required: gives back units of an allocation
/// (`tally.release_usage`). A consumable is 422 `not_an_allocation`, more
/// units than are in use 409 `decrement_exceeds_used`; a repeated key
/// returns the first result and decrements once.
pub async fn decrement(
    Metric(metric): Metric,
    headers: HeaderMap,
    request: AuthedJson<Units>,
) -> Result<Json<Value>, ApiError> {
    let Some(key) = idempotency_key(&headers)? else {
        return Err(ApiError::bad_request(
            "idempotency_key_required",
            "a decrement needs an Idempotency-Key header, unique per logical request",
        ));
    };
    let AuthedJson { authed, body } = request;
    let used = db::release(&authed.client, &authed.tenant_id, &metric, body.units, key)
        .await
        .map_err(|error| ApiError::from_db("decrementing usage", error))?;
    Ok(Json(json!({ "metric": metric, "used": used })))
}

/// `GET /v1/usage`: the tenant's plan, status and every metric.
pub async fn usage(mut authed: Authed) -> Result<Json<db::Usage>, ApiError> {
    db::usage(&mut authed.client, &authed.tenant_id)
        .await
        .map(Json)
        .map_err(|error| ApiError::from_db("reading usage", error))
}

/// `POST /v1/plan/validate`, body `{"plan_id": "starter"}`: whether the
/// tenant may move to that plan, and what to remove first if not.
pub async fn validate_plan(
    State(state): State<AppState>,
    request: AuthedJson<PlanRequest>,
) -> Result<Json<db::PlanCheck>, ApiError> {
    let AuthedJson { authed, body } = request;
    let check = db::validate_plan(&authed.client, &authed.tenant_id, &body.plan_id)
        .await
        .map_err(|error| ApiError::from_db("validating a plan change", error))?;
    if !check.valid {
        state.metrics.plan_changes_blocked.inc();
    }
    Ok(Json(check))
}

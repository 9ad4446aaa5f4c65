//! The tenant API. The tenant comes only from the API key: no request can
//! name, read or change another tenant's data.

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{ApiError, AppState, JsonBody};
use crate::api_keys;
use crate::db::tenant_api as db;
use crate::db::PooledClient;
use crate::metrics::OutcomeLabels;

/// An authenticated request: the key's tenant, and the connection that
/// looked it up, reused for the request itself.
pub struct Authed {
    tenant_id: String,
    client: PooledClient,
}

impl FromRequestParts<AppState> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Authed, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok());
        let key = api_keys::from_authorization(header).ok_or_else(ApiError::unauthorized)?;
        let client = state.client().await?;
        match db::tenant_for_key(&client, &api_keys::hash(key)).await {
            Ok(Some(tenant_id)) => Ok(Authed { tenant_id, client }),
            Ok(None) => Err(ApiError::unauthorized()),
            Err(error) => Err(ApiError::from_db("looking up an API key", error)),
        }
    }
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
/// `Idempotency-Key` header. 200 whether allowed or not: the body says.
pub async fn check(
    State(state): State<AppState>,
    authed: Authed,
    Path(metric): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<Units>,
) -> Result<Json<db::Check>, ApiError> {
    let key = match headers.get("idempotency-key") {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::bad_request(
                "invalid_request",
                "the Idempotency-Key header must be printable ASCII",
            )
        })?),
        None => None,
    };
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

/// `POST /v1/usage/{metric}/decrement`, body `{"units": n}` (default 1).
pub async fn decrement(
    authed: Authed,
    Path(metric): Path<String>,
    JsonBody(body): JsonBody<Units>,
) -> Result<Json<Value>, ApiError> {
    let used = db::decrement(&authed.client, &authed.tenant_id, &metric, body.units)
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
    authed: Authed,
    JsonBody(body): JsonBody<PlanRequest>,
) -> Result<Json<db::PlanCheck>, ApiError> {
    let check = db::validate_plan(&authed.client, &authed.tenant_id, &body.plan_id)
        .await
        .map_err(|error| ApiError::from_db("validating a plan change", error))?;
    if !check.valid {
        state.metrics.plan_changes_blocked.inc();
    }
    Ok(Json(check))
}

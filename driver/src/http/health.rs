//! `/healthz` (the process answers), `/readyz` (the database answers and has
//! the extension at the version this tallyd needs, in schema `tally`) and
//! `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::AppState;
use crate::{db, EXTENSION_VERSION};

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(state): State<AppState>) -> Response {
    let not_ready = |reason: String| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "reason": reason})),
        )
            .into_response()
    };
    let client = match state.pool.get().await {
        Ok(client) => client,
        Err(error) => return not_ready(format!("database unreachable: {error}")),
    };
    match db::extension_version(&client).await {
        Ok(Some(version)) if version == EXTENSION_VERSION => {
            match db::check_extension_home(&**client).await {
                Ok(()) => Json(json!({"ready": true, "extension": version})).into_response(),
                Err(error) => not_ready(format!("{error:#}")),
            }
        }
        Ok(Some(version)) => not_ready(format!(
            "the database has tally {version}, this tallyd needs {EXTENSION_VERSION}: run tallyd migrate"
        )),
        Ok(None) => not_ready("the tally extension is not installed: run tallyd migrate".into()),
        Err(error) => not_ready(format!("database error: {error}")),
    }
}

pub async fn metrics(State(state): State<AppState>) -> Response {
    let status = state.pool.status();
    state.metrics.pool_size.set(status.size as i64);
    state.metrics.pool_available.set(status.available as i64);
    // The queue as it is now; if the database does not answer, the gauges
    // keep their last values.
    if let Ok(client) = state.pool.get().await {
        if let Ok(stats) = db::reports::stats(&client).await {
            state.metrics.queue_pending.set(stats.pending);
            state.metrics.queue_leased.set(stats.leased);
            state.metrics.queue_failed.set(stats.failed);
            state
                .metrics
                .queue_oldest_pending_seconds
                .set(stats.oldest_pending_seconds.unwrap_or(0.0));
        }
        if let Ok(stats) = db::alerts::stats(&client).await {
            state.metrics.alert_queue_pending.set(stats.pending);
            state.metrics.alert_queue_failed.set(stats.failed);
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

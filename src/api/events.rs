//! `POST /v1/events`: one event or an array. All are validated first (a 400
//! names the index and field, and nothing is ingested; an event dated more
//! than `store.allowed_future_secs` ahead of the server's clock, or more than
//! `store.allowed_lateness_secs` behind it, is invalid too); then they are
//! applied
//! in-process (embedded) or produced to Kafka, and 202 is returned once the
//! store or the broker acknowledged them all.
//!
//! The body is read as JSON whatever its `Content-Type`: the SDK's
//! `navigator.sendBeacon` on page exit sends the same JSON as `text/plain`,
//! a type a browser sends cross-origin without a CORS preflight (a beacon
//! cannot answer one).

use super::{parse_json, ApiError, AppStateRef, Ingest};
use crate::event::Event;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

/// Most events in one request.
pub const MAX_EVENTS: usize = 10_000;

pub async fn post_events(
    state: AppStateRef,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let values = match parse_json(&body)? {
        Value::Array(a) => a,
        v @ Value::Object(_) => vec![v],
        _ => {
            return Err(ApiError::bad_request(
                "body must be an event object or an array of events",
                None,
                None,
            ))
        }
    };
    if values.is_empty() {
        return Err(ApiError::bad_request(
            "the array holds no events",
            None,
            None,
        ));
    }
    if values.len() > MAX_EVENTS {
        return Err(ApiError::bad_request(
            format!(
                "{} events in one request; the limit is {MAX_EVENTS}",
                values.len()
            ),
            None,
            None,
        ));
    }
    let mut events = Vec::with_capacity(values.len());
    let now = state.clock.now_ms();
    let bounds = state.clock.bounds(state.cfg.store.time_bounds());
    for (i, v) in values.into_iter().enumerate() {
        match Event::from_value(v).and_then(|e| e.check_time(now, bounds).map(|()| e)) {
            Ok(e) => events.push(e),
            Err(e) => {
                let field = e.field();
                return Err(ApiError::bad_request(
                    format!("event {i}: {e}"),
                    field.as_deref(),
                    Some(i),
                ));
            }
        }
    }
    match &state.ingest {
        Ingest::InProcess => {
            let newest = crate::event::newest_ts(&events);
            let now = state.clock.write_time(newest);
            let out = crate::ingest::apply_events_with(
                &state.set,
                state.store.as_ref(),
                &events,
                now,
                Some(&state.triggers),
            )
            .await
            .map_err(|e| ApiError::Unavailable(format!("events not stored: {e}")))?;
            state.clock.observe(newest);
            state
                .seq_check
                .observe_applied(&events, &out.duplicate, &[]);
            state.changes.publish(&out.changed_customers);
        }
        Ingest::Kafka(p) => {
            p.send_events(&events)
                .await
                .map_err(|e| ApiError::Unavailable(format!("events not accepted: {e}")))?;
        }
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "accepted": events.len() })),
    ))
}

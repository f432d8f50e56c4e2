//! `/__admin/…`: read-back, reset and fault injection over HTTP.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::fault::FaultRequest;
use super::response::{Body, json, problem};
use super::shared::Shared;

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 64 * 1024;

pub(crate) async fn handle(
    shared: &Shared,
    path: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    match (request.method(), path) {
        (&Method::GET, "stats") => match serde_json::to_value(shared.stats()) {
            Ok(stats) => json(StatusCode::OK, &stats),
            Err(e) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Stats failed",
                &e.to_string(),
            ),
        },
        (&Method::POST, "reset") => {
            shared.reset();
            json(StatusCode::OK, &json!({ "reset": true }))
        }
        (&Method::POST, "faults") => {
            let body = match Limited::new(request.into_body(), MAX_ADMIN_BODY)
                .collect()
                .await
            {
                Ok(collected) => collected.to_bytes(),
                Err(_) => {
                    let detail = format!("send at most {MAX_ADMIN_BODY} bytes of JSON");
                    return problem(StatusCode::PAYLOAD_TOO_LARGE, "Body too large", &detail);
                }
            };
            let parsed = serde_json::from_slice::<FaultRequest>(&body)
                .map_err(|e| format!("not a fault request: {e}"))
                .and_then(FaultRequest::into_fault);
            match parsed {
                Ok((fault, times)) => {
                    let queued = shared.inject(fault, times);
                    json(StatusCode::OK, &json!({ "queued": queued }))
                }
                Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid fault", &detail),
            }
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "No such admin endpoint",
            "use GET /__admin/stats, POST /__admin/faults or POST /__admin/reset",
        ),
    }
}

//! `/__admin/…`: read-back, the request log, routes added at run time, reset and fault
//! injection over HTTP.

use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::json;

use super::fault::FaultRequest;
use super::response::{Body, json, problem};
use super::route::Compiled;
use super::shared::{Shared, lock};

/// Largest admin request body read.
const MAX_ADMIN_BODY: usize = 64 * 1024;

/// Reads an admin request's JSON body, up to [`MAX_ADMIN_BODY`].
async fn read(request: Request<Incoming>) -> Result<bytes::Bytes, Response<Body>> {
    match Limited::new(request.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => {
            let detail = format!("send at most {MAX_ADMIN_BODY} bytes of JSON");
            Err(problem(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Body too large",
                &detail,
            ))
        }
    }
}

/// Serves one admin request: reads answered at once, writes once their JSON body is
/// read.
pub(crate) async fn handle(
    shared: &Shared,
    path: &str,
    request: Request<Incoming>,
) -> Response<Body> {
    match (request.method(), path) {
        (&Method::GET, "requests") => {
            let log: Vec<_> = shared.requests().iter().map(|r| r.to_json()).collect();
            json(StatusCode::OK, &serde_json::Value::Array(log))
        }
        (&Method::GET, "routes") => {
            let routes: Vec<_> = shared.routes().iter().map(|r| r.to_json()).collect();
            json(StatusCode::OK, &serde_json::Value::Array(routes))
        }
        (&Method::GET, "keys") => match serde_json::to_value(shared.keys()) {
            Ok(keys) => json(StatusCode::OK, &keys),
            Err(e) => problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Keys failed",
                &e.to_string(),
            ),
        },
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
        (&Method::POST, "routes" | "faults" | "outage" | "stall") => {
            let body = match read(request).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            match path {
                "routes" => add_routes(shared, &body),
                "faults" => faults(shared, &body),
                "outage" => outage(shared, &body),
                _ => stall(shared, &body),
            }
        }
        _ => problem(
            StatusCode::NOT_FOUND,
            "No such admin endpoint",
            "use GET /__admin/stats, GET /__admin/requests, GET /__admin/keys, \
             GET or POST /__admin/routes, \
             POST /__admin/faults, POST /__admin/outage, POST /__admin/stall or \
             POST /__admin/reset",
        ),
    }
}

/// `POST /__admin/routes`: routes added after the others, as a stub file's.
fn add_routes(shared: &Shared, body: &[u8]) -> Response<Body> {
    let added = super::stubs::from_json(body).and_then(|routes| {
        let first = shared.routes().len();
        let compiled = routes
            .iter()
            .enumerate()
            .map(|(i, route)| Compiled::new(route, first + i, shared.config.seed))
            .collect::<Result<Vec<_>, String>>()?;
        let added = compiled.len();
        shared.add_routes(compiled).map(|total| (added, total))
    });
    match added {
        Ok((added, total)) => json(
            StatusCode::CREATED,
            &json!({ "added": added, "routes": total }),
        ),
        Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid route", &detail),
    }
}

/// `POST /__admin/faults`: faults queued for the next requests, or for one route's.
fn faults(shared: &Shared, body: &[u8]) -> Response<Body> {
    let parsed = serde_json::from_slice::<FaultRequest>(body)
        .map_err(|e| format!("not a fault request: {e}"))
        .and_then(|mut request| {
            let route = request.route.take();
            request
                .into_fault()
                .map(|(fault, times)| (route, fault, times))
        });
    match parsed {
        Ok((None, fault, times)) => {
            let queued = shared.inject(fault, times);
            json(StatusCode::OK, &json!({ "queued": queued }))
        }
        Ok((Some(route), fault, times)) => match shared.select(&route) {
            Ok(chosen) => {
                let mut queued = 0;
                for one in &chosen {
                    let mut faults = lock(&one.faults);
                    faults.inject(fault.clone(), times);
                    queued += faults.scripted.len();
                }
                json(StatusCode::OK, &json!({ "queued": queued, "route": route }))
            }
            Err(e) => problem(StatusCode::NOT_FOUND, "No such route", &e.to_string()),
        },
        Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid fault", &detail),
    }
}

/// `POST /__admin/outage`: the whole server down for a while.
fn outage(shared: &Shared, body: &[u8]) -> Response<Body> {
    match outage_request(body) {
        Ok((outage, duration)) => {
            shared.outage.begin(outage, duration);
            let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            json(StatusCode::OK, &json!({ "outage_ms": ms }))
        }
        Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid outage", &detail),
    }
}

/// `POST /__admin/stall`: a share of the requests held before processing.
fn stall(shared: &Shared, body: &[u8]) -> Response<Body> {
    let set = stall_request(body).and_then(|(share, duration)| {
        shared.stalls.set(share, duration)?;
        Ok((share, duration))
    });
    match set {
        Ok((share, duration)) => {
            let ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
            json(
                StatusCode::OK,
                &json!({ "stall_share": share, "stall_ms": ms }),
            )
        }
        Err(detail) => problem(StatusCode::BAD_REQUEST, "Invalid stall", &detail),
    }
}

/// The body of `POST /__admin/outage`: `{"status": 503, "duration": "5s"}` or
/// `{"drop": true, "duration": "5s"}`; a zero duration ends an outage.
fn outage_request(body: &[u8]) -> Result<(super::Outage, std::time::Duration), String> {
    serde_json::from_slice::<super::outage::OutageSpec>(body)
        .map_err(|e| format!("not an outage request: {e}"))?
        .resolve()
}

/// The body of `POST /__admin/stall`: `{"share": 0.02, "duration": "1s"}`; a zero
/// share or duration ends stalls.
fn stall_request(body: &[u8]) -> Result<(f64, std::time::Duration), String> {
    serde_json::from_slice::<super::stall::StallSpec>(body)
        .map_err(|e| format!("not a stall request: {e}"))?
        .resolve()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outage_requests() {
        let five = std::time::Duration::from_secs(5);
        assert_eq!(
            outage_request(br#"{"status": 503, "duration": "5s"}"#),
            Ok((
                super::super::Outage::Status(StatusCode::SERVICE_UNAVAILABLE),
                five
            ))
        );
        assert_eq!(
            outage_request(br#"{"drop": true, "duration": "5s"}"#),
            Ok((super::super::Outage::Drop, five))
        );
        for bad in [
            &br#"{"duration": "5s"}"#[..],
            br#"{"status": 503, "drop": true, "duration": "5s"}"#,
            br#"{"status": 42, "duration": "5s"}"#,
            br#"{"status": 503, "duration": "soon"}"#,
            br#"{"status": 503}"#,
        ] {
            assert!(
                outage_request(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

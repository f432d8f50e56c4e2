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
        (&Method::POST, "routes") => {
            let body = match read(request).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let added = super::stubs::from_json(&body).and_then(|routes| {
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
            let body = match read(request).await {
                Ok(body) => body,
                Err(answer) => return answer,
            };
            let parsed = serde_json::from_slice::<FaultRequest>(&body)
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
        _ => problem(
            StatusCode::NOT_FOUND,
            "No such admin endpoint",
            "use GET /__admin/stats, GET /__admin/requests, GET or POST /__admin/routes, \
             POST /__admin/faults or POST /__admin/reset",
        ),
    }
}

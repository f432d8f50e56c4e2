//! One request in proxy mode, as named steps: received (the body read within
//! `max_body_bytes`), matched to a route by method and path (for its faults and rate
//! limit; a route here needs no answer) and logged; a fault drawn, and a *before
//! processing* one acts
//! without forwarding anything; forwarded to the upstream; the exchange written in the
//! key book; the upstream's answer passed back as it came, or spoiled by an *after
//! processing* fault once the upstream has finished.

// As in the handler: a step's early answer is a whole response, moved once to hyper.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Instant;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::handler::{Received, Step, draw_fault, log, receive, scope_of, spoil};
use super::keys::{Exchange, digest, resource_id};
use super::response::{Body, Dropped, problem};
use super::shared::{Shared, scope_label};
use super::socket::Sabotage;
use super::upstream::{Answered, Upstream};

/// The largest upstream answer passed on: far above any API's answer.
const MAX_ANSWER_BYTES: usize = 16 << 20;

/// Serves one request by forwarding it to the upstream.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    sabotage: &Sabotage,
    upstream: &Upstream,
    method: Method,
    path: String,
    request: Request<Incoming>,
) -> Step<Result<Response<Body>, Dropped>> {
    let Received { parts, key, body } = receive(shared, &method, &path, request).await?;
    let (uri, headers) = (&parts.uri, &parts.headers);
    // A route, matched by method and path alone, brings its own faults and rate limit.
    let routes = shared.routes();
    let route = routes
        .iter()
        .find(|r| r.path_params(&method, &path).is_some());
    let logged = (&body[..], route.map(|r| &r.name));
    log(shared, &method, &path, uri, headers, key.as_ref(), logged);
    if let Some(route) = route {
        route.count_request();
        let refusal = route
            .throttle
            .as_ref()
            .and_then(|t| t.admit(Instant::now()));
        if let Some(refusal) = refusal {
            return Err(Ok(refusal));
        }
    }
    let after = draw_fault(shared, sabotage, route.map(|r| &**r)).await?;
    // Only a request with a key is written in the key book.
    let sent_key = headers
        .get(&shared.config.key_header)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body_digest = sent_key.as_ref().map(|_| digest(&body));
    let forwarded_at = Instant::now();
    let forwarded = upstream
        .forward(&method, uri, headers, body, MAX_ANSWER_BYTES)
        .await;
    if let Some((key, body_digest)) = sent_key.zip(body_digest) {
        let fault = after.map(|a| a.name());
        let exchange = exchange(upstream, &forwarded, body_digest, fault);
        let scope = scope_label(scope_of(shared, headers).as_ref());
        shared.record_exchange(key, scope, forwarded_at, exchange);
    }
    match forwarded {
        Ok(answered) => Ok(spoil(sabotage, after, passed_back(answered)).await),
        Err(reason) => Err(Ok(problem(
            StatusCode::BAD_GATEWAY,
            "Upstream failed",
            &format!("the upstream gave no answer: {reason}"),
        ))),
    }
}

/// What the key book keeps of one exchange.
fn exchange(
    upstream: &Upstream,
    forwarded: &Result<Answered, String>,
    body_digest: String,
    fault: Option<&'static str>,
) -> Exchange {
    let (answered, error) = match forwarded {
        Ok(answered) => (Some(answered), None),
        Err(reason) => (None, Some(reason.clone())),
    };
    let replayed = answered
        .and_then(|a| a.headers.get("idempotent-replayed"))
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let pointer = upstream.id_pointer.as_deref();
    Exchange {
        // Set by the key book, from the time the request was forwarded.
        at_ms: 0,
        body_digest,
        status: answered.map(|a| a.status.as_u16()),
        answer_digest: answered.map(|a| digest(&a.body)),
        replayed,
        resource_id: answered
            .zip(pointer)
            .and_then(|(a, p)| resource_id(&a.body, p)),
        fault: fault.map(str::to_owned),
        error,
    }
}

/// The upstream's answer, as the proxy's own.
fn passed_back(answered: Answered) -> Response<Body> {
    let mut response = Response::new(Body::full(answered.body));
    *response.status_mut() = answered.status;
    *response.headers_mut() = answered.headers;
    response
}

//! One request to a mock server that has routes: the same steps as the built-in answer
//! (log, fault before, key, body, the idempotent decision, fault after), with the
//! answer matched and rendered from the caller's routes. For an operation, a stored or
//! in-flight key answers first, whatever the routes are now; then the route is matched
//! and its answer rendered and checked (a `404` or `400` from here is not stored and
//! uses no id and no `{{seq}}`); then the operation executes and is stored.

// As in the handler: a step's early answer is a whole response, moved once to hyper.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::closure::MockRequest;
use super::handler::{
    Claim, Received, Step, check_key, claim, draw_fault, execute, log, read_back, receive,
    scope_of, spoil,
};
use super::key::Key;
use super::response::{self, Body, Dropped, problem};
use super::route::{Compiled, NoMatch, Params, find};
use super::shared::{CreatedId, Resource, Routes, Shared};
use super::socket::Sabotage;
use super::store::{ScopedKey, Stored};
use super::template::Fields;
use super::wire::{body_json, fingerprint};

/// What a request offers the templates, owned so that the operation can render after
/// its processing delay.
struct RequestData {
    body: Value,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    /// Unix seconds when the request arrived, for `{{now}}`.
    now: u64,
}

impl RequestData {
    /// What a closure handler sees, copied.
    fn request(
        &self,
        (method, path, params): (&Method, &str, &Params),
        id: String,
        seq: u64,
    ) -> MockRequest {
        MockRequest {
            method: method.clone(),
            path: path.to_owned(),
            params: params.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            body: self.body.clone(),
            id,
            seq,
        }
    }

    fn fields<'a>(&'a self, params: &'a [(String, String)], id: &'a str, seq: u64) -> Fields<'a> {
        Fields {
            id,
            seq,
            now: self.now,
            body: &self.body,
            path: params,
            query: &self.query,
            headers: &self.headers,
        }
    }
}

/// Serves one request against the routes: read and matched, logged, admitted by the
/// route's rate limit, its key checked and a fault drawn; then answered as a read or
/// executed as an operation.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    routes: &Routes,
    method: Method,
    path: String,
    (sabotage, request): (&Sabotage, Request<Incoming>),
) -> Step<Result<Response<Body>, Dropped>> {
    let operation = matches!(
        method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    let Received { parts, key, body } = receive(shared, &method, &path, request).await?;
    let (uri, headers) = (parts.uri, parts.headers);
    let data = match request_data(&uri, headers, &body) {
        Ok(data) => data,
        Err((headers, detail)) => {
            let logged = (&body[..], None);
            log(shared, &method, &path, &uri, &headers, key.as_ref(), logged);
            return Err(Ok(problem(
                StatusCode::BAD_REQUEST,
                "Invalid body",
                &detail,
            )));
        }
    };
    let found = matched(routes, &method, &path, &data);
    let route = found.as_ref().ok().map(|(index, _)| &routes[*index]);
    let logged = (&body[..], route.map(|r| &r.name));
    log(
        shared,
        &method,
        &path,
        &uri,
        &data.headers,
        key.as_ref(),
        logged,
    );
    if let Some(route) = route {
        admit(route)?;
    }
    let key = if operation {
        check_key(shared, key)?
    } else {
        None
    };
    // A request no route answers takes no fault.
    let after = match route {
        Some(route) => draw_fault(shared, sabotage, Some(route)).await?,
        None => None,
    };
    if !operation {
        let answer = read(shared, routes, found, &data, (&method, &path))?;
        return Ok(spoil(sabotage, after, answer).await);
    }
    let target = uri.path_and_query().map_or(path.as_str(), |p| p.as_str());
    let fingerprint = fingerprint(&method, target, &body);
    let request = Operation {
        key,
        fingerprint,
        data,
        method,
        path,
    };
    let answer = operate(shared, routes, found, request).await?;
    Ok(spoil(sabotage, after, answer).await)
}

/// A route's rate limit: past it, refused before anything else (a queued fault left
/// for a request the server processes).
fn admit(route: &Compiled) -> Step<()> {
    route.count_request();
    let refusal = route
        .throttle
        .as_ref()
        .and_then(|t| t.admit(Instant::now()));
    match refusal {
        Some(refusal) => Err(Ok(refusal)),
        None => Ok(()),
    }
}

/// What the templates read of a request; a body that is not valid JSON or form data
/// gives back the headers and what is wrong with it.
fn request_data(
    uri: &http::Uri,
    headers: HeaderMap,
    body: &bytes::Bytes,
) -> Result<RequestData, (HeaderMap, String)> {
    let json = match body_json(&headers, body) {
        Ok(json) => json,
        Err(detail) => return Err((headers, detail)),
    };
    Ok(RequestData {
        body: json,
        query: uri
            .query()
            .and_then(|q| serde_urlencoded::from_str(q).ok())
            .unwrap_or_default(),
        headers,
        now: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    })
}

/// A read (GET, HEAD, …): the route's answer, made anew each time; without a route, a
/// resource an operation created, then `404`.
fn read(
    shared: &Shared,
    routes: &Routes,
    found: Step<(usize, Params)>,
    data: &RequestData,
    (method, path): (&Method, &String),
) -> Step<Response<Body>> {
    let (route, params) = match found {
        Ok((index, params)) => (&routes[index], params),
        Err(not_found) => {
            return match read_back(shared, method, path, &data.headers) {
                Some(answer) => Ok(answer),
                None => Err(not_found),
            };
        }
    };
    let answer = answer(route, data, (method, path, &params), "", 0)?;
    route.count_execution();
    Ok(made(route, &answer))
}

/// An operation as the routes execute it.
struct Operation {
    key: Option<Key>,
    fingerprint: u64,
    data: RequestData,
    method: Method,
    path: String,
}

/// An operation (POST, PUT, PATCH, DELETE): a stored or in-flight key answers first;
/// then the route's answer is checked with stand-ins (a `404` or `400` here stores
/// nothing and uses no id); then it executes, once per key, and is stored.
async fn operate(
    shared: &Arc<Shared>,
    routes: &Routes,
    found: Step<(usize, Params)>,
    request: Operation,
) -> Step<Response<Body>> {
    let Operation {
        key,
        fingerprint,
        data,
        method,
        path,
    } = request;
    let scope = scope_of(shared, &data.headers);
    let claimed = match key {
        Some(key) => {
            let scoped = ScopedKey {
                scope: scope.clone(),
                key: key.into_boxed_str(),
            };
            match claim(shared, scoped, fingerprint) {
                Claim::Claimed(scoped) => Some(scoped),
                Claim::Answer(answer) => return Ok(answer),
                Claim::Early(answer) => return Err(Ok(answer)),
            }
        }
        None => None,
    };
    let checked = checked(routes, found, &data, (&method, &path));
    let (route, params) = match checked {
        Ok(found) => found,
        Err(answer) => {
            if let Some(scoped) = &claimed {
                shared.abandon(scoped);
            }
            return Err(answer);
        }
    };
    let at = Resource {
        scope,
        path: path.clone(),
    };
    let stored = execute(shared.clone(), claimed, at, move |shared: &Shared, n| {
        let id = route.id(shared.config.seed, n);
        let seq = route.next_seq();
        let stored = match &route.handler {
            Some(handler) => {
                let request = data.request((&method, &path, &params), id, seq);
                handler.answer(&request, &route.name).map_err(failed)?
            }
            // Checked above with stand-ins: only a bug could fail it here.
            None => render(&route, &data.fields(&params, &id, seq))
                .unwrap_or_else(|_| failed("the answer could not be rendered".into())),
        };
        route.count_execution();
        let created = created_id(&stored);
        Ok((stored, created))
    })
    .await?;
    Ok(response::stored(&stored, false))
}

/// The route an operation executes, its answer checked with a stand-in id and seq (the
/// real ones are drawn only for an answer that will be stored). A route that stores
/// nothing answers here, as is, the key left free.
fn checked(
    routes: &Routes,
    found: Step<(usize, Params)>,
    data: &RequestData,
    (method, path): (&Method, &String),
) -> Step<(Arc<Compiled>, Params)> {
    let (index, params) = found?;
    let route = &routes[index];
    if !route.store {
        let answer = answer(route, data, (method, path, &params), "", route.seq())?;
        return Err(Ok(made(route, &answer)));
    }
    if route.handler.is_none() {
        route
            .check(&data.fields(&params, "id", 1))
            .map_err(|detail| cannot_answer(route, &detail))?;
    }
    Ok((route.clone(), params))
}

/// The answer a route made for a request that stores nothing, its body streamed when
/// the route says so.
fn made(route: &Compiled, answer: &Stored) -> Response<Body> {
    match route.stream_body {
        Some(bytes) => response::streamed(answer, bytes),
        None => response::stored(answer, false),
    }
}

/// The index of the route that answers the request, with its path parameters, or a
/// `404` saying which nearly did.
fn matched(
    routes: &[Arc<Compiled>],
    method: &Method,
    path: &str,
    data: &RequestData,
) -> Step<(usize, Params)> {
    find(routes, method, path, |route, params| {
        route.conditions(&data.fields(params, "", 0))
    })
    .map_err(|NoMatch(why)| Ok(problem(StatusCode::NOT_FOUND, "No route", &why)))
}

/// The top-level `id` of a 2xx answer, which makes it readable at `{path}/{id}`.
fn created_id(stored: &Stored) -> Option<CreatedId> {
    #[derive(serde::Deserialize)]
    struct Created {
        id: Option<Value>,
    }
    if !stored.status.is_success() {
        return None;
    }
    match serde_json::from_slice::<Created>(&stored.body).ok()?.id? {
        Value::String(id) => Some(CreatedId::Text(id)),
        Value::Number(id) => Some(CreatedId::Text(id.to_string())),
        _ => None,
    }
}

/// A route's answer to a request that stores nothing: its closure's (a failure is a
/// `500`), or its templates rendered (a field the request lacks is a `400`).
fn answer(
    route: &Compiled,
    data: &RequestData,
    at: (&Method, &str, &Params),
    id: &str,
    seq: u64,
) -> Step<Stored> {
    match &route.handler {
        Some(handler) => {
            let request = data.request(at, id.to_owned(), seq);
            Ok(handler.answer(&request, &route.name).unwrap_or_else(failed))
        }
        None => render(route, &data.fields(at.2, id, seq)),
    }
}

/// The `500` for an answer that could not be made, as a problem+json.
fn failed(detail: String) -> Stored {
    let status = StatusCode::INTERNAL_SERVER_ERROR;
    Stored {
        status,
        headers: Box::new([(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/problem+json"),
        )]),
        body: response::problem_body(status, "Handler failed", &detail),
    }
}

/// The `400` for a request the route cannot answer, naming what it lacks.
fn cannot_answer(route: &Compiled, detail: &str) -> Result<Response<Body>, Dropped> {
    let detail = format!("route {:?}: {detail}", route.name);
    Ok(problem(StatusCode::BAD_REQUEST, "Cannot answer", &detail))
}

/// A route's answer for these fields, or a `400` naming what the request lacks.
fn render(route: &Compiled, fields: &Fields<'_>) -> Step<Stored> {
    route
        .render(fields)
        .map_err(|detail| cannot_answer(route, &detail))
}

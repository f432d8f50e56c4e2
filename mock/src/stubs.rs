//! Stub files: routes in TOML or JSON (by extension), the same schema as [`Route`]'s
//! builder, under a top-level `route` list, and optionally the server's `outage` and
//! `stall` from its start. Unknown fields are refused; every error names the file, the
//! route and where.
//!
//! ```toml
//! [[route]]
//! name = "declined"
//! method = "POST"
//! path = "/v1/payment_intents"
//! when = { "body.payment_method" = "pm_card_declined" }
//! status = 402
//! body = '{"error": {"type": "card_error", "code": "card_declined"}}'
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use http::Method;
use serde::Deserialize;

use super::outage::{Outage, OutageSpec};
use super::route::{Compiled, Route};
use super::stall::StallSpec;

/// One route as a file writes it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stub {
    name: Option<String>,
    method: String,
    path: String,
    #[serde(default)]
    when: BTreeMap<String, Scalar>,
    status: Option<u16>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    id_prefix: Option<String>,
    store: Option<bool>,
    fault_rate: Option<f64>,
    rate_limit: Option<RateLimitStub>,
    stream_body: Option<u64>,
}

/// `rate_limit = { per_second = 10, burst = 20, retry_after = false }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RateLimitStub {
    per_second: u32,
    burst: u32,
    #[serde(default = "yes")]
    retry_after: bool,
}

fn yes() -> bool {
    true
}

/// A `when` value: text, or a scalar compared by its text.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Integer(n) => n.to_string(),
            Scalar::Float(x) => serde_json::Value::from(*x).to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlFile {
    #[serde(default)]
    route: Vec<toml::Spanned<Stub>>,
    outage: Option<OutageSpec>,
    stall: Option<StallSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFile {
    #[serde(default)]
    route: Vec<Stub>,
    outage: Option<OutageSpec>,
    stall: Option<StallSpec>,
}

/// What a stub file sets: its routes, and the server's outage and stalls from its start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    pub(crate) routes: Vec<Route>,
    pub(crate) outage: Option<(Outage, Duration)>,
    pub(crate) stall: Option<(f64, Duration)>,
}

/// What the stub file at `path` sets, checked as the server would check it; the error
/// names the file, the route (or table) and where.
pub(crate) fn load(path: &Path) -> Result<Loaded, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: {e}"))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let (stubs, outage, stall): (Vec<(Stub, Option<usize>)>, _, _) = if json {
        let file: JsonFile = serde_json::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        let stubs = file.route.into_iter().map(|s| (s, None)).collect();
        (stubs, file.outage, file.stall)
    } else {
        let file: TomlFile = toml::from_str(&text).map_err(|e| format!("{shown}: {e}"))?;
        let stubs = file
            .route
            .into_iter()
            .map(|spanned| {
                let line = text[..spanned.span().start].matches('\n').count() + 1;
                (spanned.into_inner(), Some(line))
            })
            .collect();
        (stubs, file.outage, file.stall)
    };
    let outage = outage
        .map(OutageSpec::resolve)
        .transpose()
        .map_err(|e| format!("{shown}: outage: {e}"))?;
    let stall = stall
        .map(StallSpec::resolve)
        .transpose()
        .map_err(|e| format!("{shown}: stall: {e}"))?;
    let mut routes = Vec::with_capacity(stubs.len());
    for (index, (stub, line)) in stubs.into_iter().enumerate() {
        let at = line.map_or(String::new(), |l| format!(" (line {l})"));
        let route = route(stub).map_err(|e| format!("{shown}: route {}{at}: {e}", index + 1))?;
        // Check now, so that the file, not only the route, is named.
        Compiled::new(&route, index, 0).map_err(|e| format!("{shown}{at}: {e}"))?;
        routes.push(route);
    }
    Ok(Loaded {
        routes,
        outage,
        stall,
    })
}

/// Routes sent as JSON to `POST /__admin/routes`: one route object, a list of them,
/// or a stub file's `{"route": [...]}`.
pub(crate) fn from_json(text: &[u8]) -> Result<Vec<Route>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let stubs: Vec<Stub> = match &value {
        serde_json::Value::Array(_) => serde_json::from_value(value),
        serde_json::Value::Object(map) if map.contains_key("route") => {
            let file = serde_json::from_value::<JsonFile>(value).map_err(|e| e.to_string())?;
            if file.outage.is_some() || file.stall.is_some() {
                return Err("routes only: send an outage to POST /__admin/outage and \
                            stalls to POST /__admin/stall"
                    .to_owned());
            }
            Ok(file.route)
        }
        _ => serde_json::from_value(value).map(|stub| vec![stub]),
    }
    .map_err(|e| e.to_string())?;
    stubs
        .into_iter()
        .enumerate()
        .map(|(index, stub)| route(stub).map_err(|e| format!("route {}: {e}", index + 1)))
        .collect()
}

fn route(stub: Stub) -> Result<Route, String> {
    let method = Method::from_bytes(stub.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("method {:?} is not an HTTP method", stub.method))?;
    let mut route = Route::new(method, stub.path);
    if let Some(name) = stub.name {
        route = route.name(name);
    }
    for (field, value) in &stub.when {
        route = route.when(field.clone(), value.text());
    }
    if let Some(status) = stub.status {
        route = route.status(status);
    }
    for (name, value) in stub.headers {
        route = route.header(name, value);
    }
    if let Some(body) = stub.body {
        route = route.body(body);
    }
    if let Some(prefix) = stub.id_prefix {
        route = route.id_prefix(prefix);
    }
    if let Some(store) = stub.store {
        route = route.store(store);
    }
    if let Some(rate) = stub.fault_rate {
        route = route.fault_rate(rate);
    }
    if let Some(bytes) = stub.stream_body {
        route = route.stream_body(bytes);
    }
    if let Some(limit) = stub.rate_limit {
        route = route
            .rate_limit(limit.per_second, limit.burst)
            .rate_limit_retry_after(limit.retry_after);
    }
    Ok(route)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(name: &str, text: &str) -> Result<Vec<Route>, String> {
        let dir =
            std::env::temp_dir().join(format!("idempotent-retry-stubs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        let result = load(&path).map(|loaded| loaded.routes);
        std::fs::remove_file(&path).unwrap();
        result
    }

    const GOOD: &str = r#"
[[route]]
name = "declined"
method = "post"
path = "/v1/payment_intents"
when = { "body.payment_method" = "pm_card_declined", "body.amount" = 2000 }
status = 402
body = '{"error": {"code": "card_declined"}}'

[[route]]
method = "POST"
path = "/v1/payment_intents"
id_prefix = "pi_"
headers = { "Request-Id" = "req_{{seq}}" }
body = '{"id": "{{id}}", "amount": {{body.amount}}}'
"#;

    #[test]
    fn toml_and_json_give_the_same_routes() {
        let toml = load_text("api.toml", GOOD).unwrap();
        assert_eq!(toml.len(), 2);
        let json = load_text(
            "api.json",
            r#"{"route": [{"method": "GET", "path": "/v1/customers/{id}",
                           "body": "{\"id\": \"{{path.id}}\"}"}]}"#,
        )
        .unwrap();
        assert_eq!(json.len(), 1);
    }

    #[test]
    fn bad_files_name_the_file_the_route_and_where() {
        for (name, text, needles) in [
            (
                "a.toml",
                "[[route]]\nmethod = \"POST\"\npath = \"/p\"\ncolour = \"red\"\n",
                vec!["a.toml", "colour"],
            ),
            (
                "b.toml",
                "[[route]]\nmethod = \"POST\"\n",
                vec!["b.toml", "path"],
            ),
            ("c.toml", "[[route]\n", vec!["c.toml", "line 1"]),
            (
                "d.toml",
                "\n\n[[route]]\nname = \"x\"\nmethod = \"POST\"\npath = \"/p\"\nbody = '{\"a\": {{nope}}}'\n",
                vec!["d.toml", "(line 3)", "\"x\"", "1:7"],
            ),
            (
                "e.toml",
                "[[route]]\nmethod = \"NOT A METHOD\"\npath = \"/p\"\n",
                vec!["e.toml", "route 1", "not an HTTP method"],
            ),
            (
                "f.json",
                "{\"route\": [{\"method\": \"POST\", \"path\": \"/p\", \"status\": \"ok\"}]}",
                vec!["f.json", "line 1"],
            ),
            (
                "g.json",
                "{\"routes\": []}",
                vec!["g.json", "unknown field"],
            ),
        ] {
            let err = load_text(name, text).unwrap_err();
            for needle in needles {
                assert!(err.contains(needle), "{name}: {err} lacks {needle}");
            }
        }
        assert!(
            load(Path::new("/nonexistent/stubs.toml"))
                .unwrap_err()
                .contains("stubs.toml")
        );
    }
}

//! Answer templates: text with `{{placeholder}}`s, parsed once when a route is loaded and
//! rendered for each request that matches it.
//!
//! Placeholders: `{{id}}`, `{{seq}}`, `{{now}}`, `{{body.FIELD}}`, `{{path.NAME}}`,
//! `{{query.NAME}}`, `{{header.NAME}}`; fields nest with dots (`items.0.price`). In a
//! body, a placeholder inside a JSON string is written as string content (escaped); a
//! bare one must render to a JSON value. A field the request does not have is an error
//! naming it, never an empty string.

use std::fmt;
use std::io;

use http::HeaderMap;
use serde_json::Value;

/// Where a placeholder takes its value from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The new resource's id.
    Id,
    /// Executions of the route, from 1.
    Seq,
    /// Unix seconds.
    Now,
    /// A field of the request body, by path.
    Body(Vec<String>),
    /// A `{name}` segment of the route's path.
    Path(String),
    /// A query parameter.
    Query(String),
    /// A request header (its name lower-cased).
    Header(String),
}

/// How a rendered value is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Context {
    /// Inside a JSON string: string content, escaped.
    InString,
    /// A JSON value on its own: it must be one.
    Bare,
    /// A header value: the text itself.
    Text,
}

#[derive(Clone, Debug, PartialEq)]
enum Segment {
    Literal(String),
    Field {
        source: Source,
        context: Context,
        /// As written between the braces, for error messages.
        written: String,
    },
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Template {
    segments: Vec<Segment>,
    /// Literal bytes, to size the output once.
    literal_len: usize,
}

/// A template that cannot be parsed, with where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) column: usize,
    pub(crate) reason: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.reason)
    }
}

/// A placeholder the request cannot fill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RenderError {
    /// The placeholder as written, such as `body.amount`.
    pub(crate) placeholder: String,
    pub(crate) reason: &'static str,
}

impl fmt::Display for RenderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{{{{}}}}}: {}", self.placeholder, self.reason)
    }
}

/// What one request offers the placeholders.
pub(crate) struct Fields<'a> {
    pub(crate) id: &'a str,
    pub(crate) seq: u64,
    pub(crate) now: u64,
    /// The body as JSON (a form body converted, see [`form_to_json`]); `Null` if none.
    pub(crate) body: &'a Value,
    pub(crate) path: &'a [(String, String)],
    pub(crate) query: &'a [(String, String)],
    pub(crate) headers: &'a HeaderMap,
}

/// A field's value: JSON from the body, a number, or text from elsewhere.
enum Found<'a> {
    Json(&'a Value),
    Number(u64),
    Text(std::borrow::Cow<'a, str>),
}

impl Template {
    /// Parses a body template: placeholders know whether they stand inside a JSON string.
    pub(crate) fn body(text: &str) -> Result<Self, ParseError> {
        Self::parse(text, true)
    }

    /// Parses a header value template.
    pub(crate) fn header(text: &str) -> Result<Self, ParseError> {
        Self::parse(text, false)
    }

    fn parse(text: &str, json: bool) -> Result<Self, ParseError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut in_string = false;
        let mut escaped = false;
        let mut rest = text;
        let mut offset = 0;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix("{{") {
                let Some(end) = after.find("}}") else {
                    return Err(error_at(text, offset, "`{{` is never closed by `}}`"));
                };
                let written = after[..end].trim();
                let source = field(written).map_err(|reason| error_at(text, offset, &reason))?;
                if !literal.is_empty() {
                    segments.push(Segment::Literal(std::mem::take(&mut literal)));
                }
                let context = match (json, in_string) {
                    (false, _) => Context::Text,
                    (true, true) => Context::InString,
                    (true, false) => Context::Bare,
                };
                segments.push(Segment::Field {
                    source,
                    context,
                    written: written.to_owned(),
                });
                let used = 2 + end + 2;
                rest = &rest[used..];
                offset += used;
                continue;
            }
            let Some(c) = rest.chars().next() else { break };
            if json {
                match (c, escaped) {
                    (_, true) => escaped = false,
                    ('\\', false) if in_string => escaped = true,
                    ('"', false) => in_string = !in_string,
                    _ => {}
                }
            }
            literal.push(c);
            rest = &rest[c.len_utf8()..];
            offset += c.len_utf8();
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        let literal_len = segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => l.len(),
                Segment::Field { .. } => 0,
            })
            .sum();
        Ok(Self {
            segments,
            literal_len,
        })
    }

    /// The placeholders' sources and contexts, to check them against a route.
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&Source, Context)> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Field {
                source, context, ..
            } => Some((source, *context)),
            Segment::Literal(_) => None,
        })
    }

    /// Renders the template for one request into exactly one allocation: a first
    /// pass measures (and finds any field the request cannot fill), the second writes
    /// into a buffer of that size.
    pub(crate) fn render(&self, fields: &Fields<'_>) -> Result<Vec<u8>, RenderError> {
        let len = self.check(fields)?;
        let mut out = Vec::with_capacity(len);
        self.write(&mut out, fields)?;
        debug_assert_eq!(out.len(), len, "the measure and the render agree");
        Ok(out)
    }

    /// Whether the request fills every placeholder, and the rendered length; allocates
    /// nothing.
    pub(crate) fn check(&self, fields: &Fields<'_>) -> Result<usize, RenderError> {
        let mut measure = Measure(0);
        self.write(&mut measure, fields)?;
        Ok(measure.0)
    }

    /// For a header template: whether the request fills every placeholder, and whether
    /// the result is a valid header value (visible ASCII, spaces, tabs, and bytes past
    /// ASCII); allocates nothing.
    pub(crate) fn check_header(&self, fields: &Fields<'_>) -> Result<bool, RenderError> {
        let mut check = HeaderCheck(true);
        self.write(&mut check, fields)?;
        Ok(check.0)
    }

    fn write(&self, out: &mut impl io::Write, fields: &Fields<'_>) -> Result<(), RenderError> {
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => put(out, text.as_bytes()),
                Segment::Field {
                    source,
                    context,
                    written,
                } => {
                    let fail = |reason| RenderError {
                        placeholder: written.clone(),
                        reason,
                    };
                    let found = find(source, fields)
                        .ok_or_else(|| fail("the request has no such field"))?;
                    write_value(out, &found, *context).map_err(fail)?;
                }
            }
        }
        Ok(())
    }
}

/// A sink that counts what would be written.
struct Measure(usize);

impl io::Write for Measure {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A sink that checks that what would be written is a valid header value, by the rule
/// `http::HeaderValue` applies.
struct HeaderCheck(bool);

impl io::Write for HeaderCheck {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 &= buf.iter().all(|&b| (b >= 32 && b != 127) || b == b'\t');
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes to a sink that cannot fail: a `Vec` or a [`Measure`].
fn put(out: &mut impl io::Write, bytes: &[u8]) {
    // Both sinks take every byte; an error cannot happen.
    let _ = out.write_all(bytes);
}

/// A sink that writes what it is given as the content of a JSON string: `"` and `\`
/// escaped, control characters as escapes. It works byte by byte, which is sound for
/// UTF-8: every byte it escapes is ASCII, and multi-byte sequences pass through whole.
struct Escape<'a, W: io::Write>(&'a mut W);

impl<W: io::Write> io::Write for Escape<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut start = 0;
        for (i, &byte) in buf.iter().enumerate() {
            let escaped: &[u8] = match byte {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0x00..=0x1f => {
                    put(self.0, &buf[start..i]);
                    let hex = b"0123456789abcdef";
                    let code = [
                        b'\\',
                        b'u',
                        b'0',
                        b'0',
                        hex[usize::from(byte >> 4)],
                        hex[usize::from(byte & 0xf)],
                    ];
                    put(self.0, &code);
                    start = i + 1;
                    continue;
                }
                _ => continue,
            };
            put(self.0, &buf[start..i]);
            put(self.0, escaped);
            start = i + 1;
        }
        put(self.0, &buf[start..]);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The source a placeholder (or a route's `when` field) names, or why it names none.
pub(crate) fn field(written: &str) -> Result<Source, String> {
    let (root, rest) = match written.split_once('.') {
        Some((root, rest)) => (root, Some(rest)),
        None => (written, None),
    };
    let named = |what: &str| match rest {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(format!(
            "`{{{{{written}}}}}` needs a name: `{{{{{what}.NAME}}}}`"
        )),
    };
    match (root, rest) {
        ("id", None) => Ok(Source::Id),
        ("seq", None) => Ok(Source::Seq),
        ("now", None) => Ok(Source::Now),
        ("body", _) => {
            let path = named("body")?;
            let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
            if parts.iter().any(String::is_empty) {
                return Err(format!("`{{{{{written}}}}}` has an empty field name"));
            }
            Ok(Source::Body(parts))
        }
        ("path", _) => named("path").map(Source::Path),
        ("query", _) => named("query").map(Source::Query),
        ("header", _) => named("header").map(|n| Source::Header(n.to_ascii_lowercase())),
        _ => Err(format!(
            "unknown placeholder `{{{{{written}}}}}`; expected id, seq, now, body.FIELD, \
             path.NAME, query.NAME or header.NAME"
        )),
    }
}

fn error_at(text: &str, offset: usize, reason: &str) -> ParseError {
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ParseError {
        line,
        column,
        reason: reason.to_owned(),
    }
}

fn find<'a>(source: &Source, fields: &'a Fields<'a>) -> Option<Found<'a>> {
    let text = |s: &'a str| Some(Found::Text(s.into()));
    let lookup = |pairs: &'a [(String, String)], name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| Found::Text(v.as_str().into()))
    };
    match source {
        Source::Id => text(fields.id),
        Source::Seq => Some(Found::Number(fields.seq)),
        Source::Now => Some(Found::Number(fields.now)),
        Source::Body(path) => json_at(fields.body, path).map(Found::Json),
        Source::Path(name) => lookup(fields.path, name),
        Source::Query(name) => lookup(fields.query, name),
        Source::Header(name) => fields
            .headers
            .get(name.as_str())
            .map(|v| Found::Text(String::from_utf8_lossy(v.as_bytes()))),
    }
}

/// A field's text, for a route's `when`: strings by their content, JSON scalars by their
/// JSON text; `None` when the request has no such field.
pub(crate) fn text_of(source: &Source, fields: &Fields<'_>) -> Option<String> {
    Some(match find(source, fields)? {
        Found::Text(text) => text.into_owned(),
        Found::Number(n) => n.to_string(),
        Found::Json(Value::String(s)) => s.clone(),
        Found::Json(value) => value.to_string(),
    })
}

/// The value at `path` in `value`: object keys, or array indexes.
pub(crate) fn json_at<'a>(value: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

fn write_value(
    out: &mut impl io::Write,
    found: &Found<'_>,
    context: Context,
) -> Result<(), &'static str> {
    match (context, found) {
        (_, Found::Number(n)) => {
            // A `u64` in decimal: digits only, the same in every context.
            let _ = write!(out, "{n}");
        }
        (Context::Text, Found::Text(text)) => put(out, text.as_bytes()),
        (Context::Text, Found::Json(Value::String(s))) => put(out, s.as_bytes()),
        (Context::Bare, Found::Json(Value::String(s))) => bare_text(out, s)?,
        (Context::Text | Context::Bare, Found::Json(value)) => json_into(out, value),
        (Context::InString, Found::Text(text)) => put(&mut Escape(out), text.as_bytes()),
        (Context::InString, Found::Json(Value::String(s))) => put(&mut Escape(out), s.as_bytes()),
        (Context::InString, Found::Json(value)) => json_into(&mut Escape(out), value),
        (Context::Bare, Found::Text(text)) => bare_text(out, text)?,
    }
    Ok(())
}

/// A JSON value's text.
fn json_into(out: &mut impl io::Write, value: &Value) {
    // Serializing a `Value` cannot fail, and neither can the sinks.
    let _ = serde_json::to_writer(out, value);
}

/// Text written where a JSON value stands: it must be one (a number, true, false, null
/// or JSON text).
fn bare_text(out: &mut impl io::Write, text: &str) -> Result<(), &'static str> {
    if serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
        return Err("is not a JSON value here (quote the placeholder to write it as a string)");
    }
    put(out, text.as_bytes());
    Ok(())
}

/// A form body as JSON: values are strings; `a[b]` nests as `a.b`; `a[]` and repeated
/// names make arrays.
pub(crate) fn form_to_json(pairs: Vec<(String, String)>) -> Value {
    let mut root = serde_json::Map::new();
    for (name, value) in pairs {
        let mut parts: Vec<&str> = Vec::new();
        let (head, mut rest) = match name.find('[') {
            Some(i) => (&name[..i], &name[i..]),
            None => (name.as_str(), ""),
        };
        parts.push(head);
        while let Some(inner) = rest.strip_prefix('[') {
            let Some(end) = inner.find(']') else { break };
            parts.push(&inner[..end]);
            rest = &inner[end + 1..];
        }
        insert(&mut root, &parts, Value::String(value));
    }
    Value::Object(root)
}

fn insert(map: &mut serde_json::Map<String, Value>, parts: &[&str], value: Value) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    match rest {
        [] => match map.get_mut(*first) {
            // A repeated name: the values make an array.
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => *existing = Value::Array(vec![existing.take(), value]),
            None => {
                map.insert((*first).to_owned(), value);
            }
        },
        [""] => match map
            .entry((*first).to_owned())
            .or_insert_with(|| Value::Array(Vec::new()))
        {
            Value::Array(items) => items.push(value),
            other => *other = Value::Array(vec![other.take(), value]),
        },
        _ => {
            let entry = map
                .entry((*first).to_owned())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
            if !entry.is_object() {
                *entry = Value::Object(serde_json::Map::new());
            }
            if let Value::Object(inner) = entry {
                insert(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn render(template: &str, body: &Value) -> Result<String, RenderError> {
        let mut headers = HeaderMap::new();
        headers.insert("request-id", HeaderValue::from_static("req_9"));
        let path = [("id".to_owned(), "pi_1".to_owned())];
        let query = [("expand".to_owned(), "customer".to_owned())];
        Template::body(template)
            .unwrap()
            .render(&Fields {
                id: "pi_abc",
                seq: 7,
                now: 1_800_000_000,
                body,
                path: &path,
                query: &query,
                headers: &headers,
            })
            .map(|bytes| String::from_utf8(bytes).unwrap())
    }

    #[test]
    fn every_placeholder() {
        let body = json!({"amount": 2000, "currency": "usd", "items": [{"price": 5}], "ok": true});
        let out = render(
            r#"{"id": "{{id}}", "seq": {{seq}}, "at": {{now}}, "amount": {{body.amount}},
               "currency": "{{body.currency}}", "first": {{body.items.0.price}},
               "path": "{{path.id}}", "expand": "{{query.expand}}", "req": "{{header.Request-Id}}",
               "ok": {{body.ok}}, "items": {{body.items}}}"#,
            &body,
        )
        .unwrap();
        let parsed: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            parsed,
            json!({"id": "pi_abc", "seq": 7, "at": 1_800_000_000u64, "amount": 2000,
                   "currency": "usd", "first": 5, "path": "pi_1", "expand": "customer",
                   "req": "req_9", "ok": true, "items": [{"price": 5}]})
        );
    }

    #[test]
    fn strings_are_escaped_and_bare_text_must_be_json() {
        let body = json!({"note": "say \"hi\"\n", "n": "12"});
        assert_eq!(
            render(r#"{"x": "{{body.note}}"}"#, &body).unwrap(),
            r#"{"x": "say \"hi\"\n"}"#
        );
        // A string whose text is JSON stands bare as that JSON, as a form's values do.
        assert_eq!(
            render(r#"{"x": {{body.n}}}"#, &body).unwrap(),
            r#"{"x": 12}"#
        );
        // A form value "12" is JSON text, so it may stand bare; "usd" may not.
        let form = form_to_json(vec![("n".into(), "12".into()), ("c".into(), "usd".into())]);
        assert_eq!(
            render(r#"{"x": {{body.n}}}"#, &form).unwrap(),
            r#"{"x": 12}"#
        );
        let err = render(r#"{"x": {{body.c}}}"#, &form).unwrap_err();
        assert_eq!(err.placeholder, "body.c");
        assert!(err.to_string().contains("not a JSON value"), "{err}");
        assert!(
            render(r#"{"id": {{id}}}"#, &form).is_err(),
            "an id is text, not JSON"
        );
    }

    #[test]
    fn a_missing_field_is_an_error_naming_it_never_empty() {
        for (template, named) in [
            (r#"{"a": {{body.missing}}}"#, "body.missing"),
            (r#"{"a": "{{body.items.9}}"}"#, "body.items.9"),
            (r#"{"a": "{{path.nope}}"}"#, "path.nope"),
            (r#"{"a": "{{query.nope}}"}"#, "query.nope"),
            (r#"{"a": "{{header.x-nope}}"}"#, "header.x-nope"),
        ] {
            let err = render(template, &json!({"items": []})).unwrap_err();
            assert_eq!(err.placeholder, named);
        }
    }

    #[test]
    fn malformed_templates_are_refused_with_their_position() {
        for (template, line, column, needle) in [
            ("{\"a\": {{id}", 1, 7, "never closed"),
            ("{\n  \"a\": {{nope}}\n}", 2, 8, "unknown placeholder"),
            ("{{body.}}", 1, 1, "needs a name"),
            ("x {{body.a..b}}", 1, 3, "empty field name"),
            ("{{path}}", 1, 1, "needs a name"),
        ] {
            let err = Template::body(template).unwrap_err();
            assert_eq!((err.line, err.column), (line, column), "{template}: {err}");
            assert!(err.reason.contains(needle), "{template}: {err}");
        }
    }

    #[test]
    fn forms_nest_by_brackets_and_repeat_into_arrays() {
        let form = form_to_json(vec![
            ("amount".into(), "2000".into()),
            ("card[number]".into(), "4242".into()),
            ("card[exp][month]".into(), "12".into()),
            ("expand[]".into(), "customer".into()),
            ("expand[]".into(), "invoice".into()),
            ("tag".into(), "a".into()),
            ("tag".into(), "b".into()),
        ]);
        assert_eq!(
            form,
            json!({"amount": "2000", "card": {"number": "4242", "exp": {"month": "12"}},
                   "expand": ["customer", "invoice"], "tag": ["a", "b"]})
        );
    }

    #[test]
    fn header_templates_write_text() {
        let template = Template::header("req_{{seq}}-{{body.currency}}").unwrap();
        let body = json!({"currency": "eur"});
        let out = template
            .render(&Fields {
                id: "",
                seq: 3,
                now: 0,
                body: &body,
                path: &[],
                query: &[],
                headers: &HeaderMap::new(),
            })
            .unwrap();
        assert_eq!(out, b"req_3-eur");
    }

    proptest::proptest! {
        /// Our escaper writes what serde_json writes inside a string, and the measuring
        /// pass agrees with the render to the byte, for any text in any context.
        #[test]
        fn escaping_matches_serde_json_and_the_measure_matches_the_render(text in "\\PC*|[\\x00-\\x7f]*") {
            let body = json!({"t": text, "nested": {"t": text}});
            let out = render(r#"{"a": "{{body.t}}", "b": "{{body.nested}}", "c": {{body.nested}}}"#, &body).unwrap();
            let parsed: Value = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(&parsed["a"], &body["t"]);
            proptest::prop_assert_eq!(parsed["b"].as_str().unwrap(), body["nested"].to_string());
            proptest::prop_assert_eq!(&parsed["c"], &body["nested"]);
            let quoted = render(r#""{{body.t}}""#, &body).unwrap();
            proptest::prop_assert_eq!(quoted, serde_json::to_string(&text).unwrap());
            let template = Template::body(r#"["{{body.t}}", {{body.nested}}]"#).unwrap();
            let headers = HeaderMap::new();
            let fields = Fields { id: "", seq: 0, now: 0, body: &body, path: &[], query: &[], headers: &headers };
            let rendered = template.render(&fields).unwrap();
            proptest::prop_assert_eq!(template.check(&fields).unwrap(), rendered.len());
            proptest::prop_assert_eq!(rendered.capacity(), rendered.len(), "one exact allocation");
        }
    }
}

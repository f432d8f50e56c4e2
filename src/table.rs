//! Reading a settings table from a configuration file so that every error names its
//! field: `retry_policy.max_delay: …`, whatever the format (TOML, JSON, YAML, …) and
//! loader, and made where the bad value is read, so that a format that points at the
//! value (TOML's line and column) still does when the settings sit deep in an
//! application's own file. Serde's derived impls name the type, not the field, and JSON
//! and YAML loaders add no key path; the tables of [`config.rs`](crate::ClientConfig)
//! and of the journal are written out over this instead.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use http::HeaderName;
use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

use crate::duration::parse_duration;

/// A settings table: its fields, how to set one from the file, and what to check once
/// all are read.
pub(crate) trait Table: Default {
    /// What it is, for "expected …" messages.
    const WHAT: &'static str;
    const FIELDS: &'static [&'static str];

    /// Reads the value of `field`, one of [`Self::FIELDS`]; `path` is the field's path
    /// from the outermost table of ours (`retry_policy.max_delay`).
    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        field: &str,
        path: &str,
        map: &mut A,
    ) -> Result<(), A::Error>;

    /// Checks the whole table; the message starts with the field at fault. A table
    /// whose every value is valid on its own has nothing to check.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
}

/// `field` under `path`: `retry_policy.max_delay`, or `max_delay` at the top.
pub(crate) fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

/// `message` prefixed with `path`, as every error of ours starts.
pub(crate) fn at<E: de::Error>(path: &str, message: impl fmt::Display) -> E {
    if path.is_empty() {
        E::custom(message)
    } else {
        E::custom(format_args!("{path}: {message}"))
    }
}

/// Deserializes a [`Table`] found at `path` from a map: unknown and repeated fields are
/// errors, and so is a table that fails its check.
///
/// Every message is made where the error happens, never by rewrapping an error on its
/// way out: a format that points at the offending value (TOML's line and column, with
/// the value underlined) attaches that place as the error leaves the value, and a
/// rewrapped error would point at the enclosing table instead.
pub(crate) fn table<'de, T: Table, D: Deserializer<'de>>(
    deserializer: D,
    path: &str,
) -> Result<T, D::Error> {
    struct TableVisitor<'p, T>(&'p str, PhantomData<T>);

    impl<'de, T: Table> Visitor<'de> for TableVisitor<'_, T> {
        type Value = T;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(T::WHAT)
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let path = self.0;
            let mut table = T::default();
            let mut seen = Vec::with_capacity(T::FIELDS.len());
            while let Some(key) = map.next_key::<String>()? {
                let Some(&field) = T::FIELDS.iter().find(|f| **f == key) else {
                    let unknown: A::Error = de::Error::unknown_field(&key, T::FIELDS);
                    return Err(at(path, unknown));
                };
                if seen.contains(&field) {
                    let duplicate: A::Error = de::Error::duplicate_field(field);
                    return Err(at(path, duplicate));
                }
                seen.push(field);
                table.set(field, &join(path, field), &mut map)?;
            }
            table
                .check()
                .map_err(|problem| de::Error::custom(join(path, &problem)))?;
            Ok(table)
        }
    }

    // Read as whatever the file holds, so that a value where a table belongs
    // (`retry_policy = 3`) reaches the visitor, whose refusal names the path.
    deserializer.deserialize_any(Prefixed::new(path, TableVisitor(path, PhantomData)))
}

/// Reads the next value of `map`, found at `path`: a plain value, or a nested table of
/// ours. Its errors start with `path`.
pub(crate) fn value<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<T, A::Error> {
    map.next_value_seed(AtPath(path, PhantomData))
}

/// `T` deserialized with every error its visitor makes prefixed with the path.
struct AtPath<'p, T>(&'p str, PhantomData<T>);

impl<'de, T: Deserialize<'de>> de::DeserializeSeed<'de> for AtPath<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        T::deserialize(PathDeserializer {
            inner: deserializer,
            path: self.0,
        })
    }
}

/// A deserializer that hands the format a [`Prefixed`] visitor.
struct PathDeserializer<'p, D> {
    inner: D,
    path: &'p str,
}

/// Forwards `deserialize_*` methods to the inner deserializer with the visitor wrapped.
macro_rules! forward_prefixed {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            self.inner.$method($($arg,)* Prefixed::new(self.path, visitor))
        }
    )*};
}

/// Forwards `deserialize_*` methods to the inner deserializer's `deserialize_any`.
macro_rules! forward_any {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_any(Prefixed::new(self.path, visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for PathDeserializer<'_, D> {
    type Error = D::Error;

    // Numbers, booleans and text are read as whatever the file holds (configuration
    // formats describe themselves): a value of the wrong type then reaches the visitor,
    // whose error names the path, instead of being refused by the format first.
    forward_any! {
        deserialize_bool deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_f32
        deserialize_f64 deserialize_char deserialize_str deserialize_string
        deserialize_identifier
    }

    forward_prefixed! {
        deserialize_any(); deserialize_bytes(); deserialize_byte_buf(); deserialize_option();
        deserialize_unit(); deserialize_seq(); deserialize_map(); deserialize_ignored_any();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn is_human_readable(&self) -> bool {
        self.inner.is_human_readable()
    }
}

/// A visitor whose errors start with the path of the value it reads. A map is passed
/// through as is: a nested table of ours prefixes its own errors, deeper and more
/// precisely.
struct Prefixed<'p, V> {
    path: &'p str,
    inner: V,
}

impl<'p, V> Prefixed<'p, V> {
    fn new(path: &'p str, inner: V) -> Self {
        Self { path, inner }
    }
}

/// Forwards `visit_*` methods of one argument, prefixing their errors.
macro_rules! visit_prefixed {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<V::Value, E> {
            let path = self.path;
            self.inner.$method::<E>(v).map_err(|e| at(path, e))
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Prefixed<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.expecting(f)
    }

    visit_prefixed! {
        visit_bool(bool); visit_i64(i64); visit_u64(u64); visit_f64(f64);
        visit_str(&str); visit_borrowed_str(&'de str); visit_string(String);
        visit_bytes(&[u8]); visit_byte_buf(Vec<u8>);
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        let path = self.path;
        self.inner.visit_unit::<E>().map_err(|e| at(path, e))
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        let path = self.path;
        self.inner.visit_none::<E>().map_err(|e| at(path, e))
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<V::Value, D::Error> {
        let path = self.path;
        self.inner.visit_some(d).map_err(|e| at(path, e))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let path = self.path;
        self.inner.visit_seq(seq).map_err(|e| at(path, e))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(map)
    }

    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        let path = self.path;
        self.inner.visit_enum(data).map_err(|e| at(path, e))
    }
}

/// A field name outside a table's list. The table's reader refuses those before it
/// calls `set`; `set` refuses them too rather than guess.
pub(crate) fn unknown<E: de::Error>(field: &str, expected: &'static [&'static str]) -> E {
    E::unknown_field(field, expected)
}

/// A setting written as text, read through [`Text`].
trait FromText: Sized {
    /// What the text should be, for "expected …" messages.
    const EXPECTING: &'static str;

    fn from_text(text: &str) -> Result<Self, String>;
}

impl FromText for Duration {
    const EXPECTING: &'static str = "a duration such as \"250ms\" or \"30s\"";

    fn from_text(text: &str) -> Result<Self, String> {
        parse_duration(text)
    }
}

/// A header name; the empty text is `None` (for a field where that means "none").
impl FromText for Option<HeaderName> {
    const EXPECTING: &'static str = "a header name";

    fn from_text(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Ok(None);
        }
        HeaderName::try_from(name)
            .map(Some)
            .map_err(|e| format!("{name:?} is not a header name: {e}"))
    }
}

/// A `T` read from text; its error made by the visitor, where the value is.
struct Text<T>(T);

impl<'de, T: FromText> Deserialize<'de> for Text<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<T>(PhantomData<T>);

        impl<T: FromText> Visitor<'_> for TextVisitor<T> {
            type Value = Text<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(T::EXPECTING)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Text<T>, E> {
                T::from_text(text).map(Text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

pub(crate) fn duration<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<Duration, A::Error> {
    value::<Text<Duration>, A>(map, path).map(|d| d.0)
}

/// A header name, or none for the empty text (for a field where that means "none").
pub(crate) fn optional_header_name<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<Option<HeaderName>, A::Error> {
    value::<Text<Option<HeaderName>>, A>(map, path).map(|name| name.0)
}

/// A header name that must be given (the empty text is not one).
pub(crate) fn header_name<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<HeaderName, A::Error> {
    value::<Text<Option<HeaderName>>, A>(map, path)?
        .0
        .ok_or_else(|| at(path, "\"\" is not a header name: it is empty"))
}

/// A list of header names, none of them empty.
pub(crate) fn header_names<'de, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<Vec<HeaderName>, A::Error> {
    value::<Vec<Text<Option<HeaderName>>>, A>(map, path)?
        .into_iter()
        .map(|name| {
            name.0
                .ok_or_else(|| at(path, "\"\" is not a header name: it is empty"))
        })
        .collect()
}

/// A nested table of ours at `path`.
struct Nested<'p, T>(&'p str, PhantomData<T>);

impl<'de, T: Table> de::DeserializeSeed<'de> for Nested<'_, T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<T, D::Error> {
        table(deserializer, self.0)
    }
}

pub(crate) fn nested<'de, T: Table, A: MapAccess<'de>>(
    map: &mut A,
    path: &str,
) -> Result<T, A::Error> {
    map.next_value_seed(Nested(path, PhantomData))
}

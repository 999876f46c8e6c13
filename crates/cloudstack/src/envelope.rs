//! Class-keyed JSON: a message body is an array of single-key objects, each key the Java class
//! name of a command or answer (CloudStack's `ArrayTypeAdaptor`), and interface-typed fields
//! (`DataTO`, `DataStoreTO`) nest the same `{"class": {...}}` wrapping (`InterfaceTypeAdaptor`).
//! This module owns that shape and class-name validity; it must not interpret the fields of any
//! command nor choose how JSON text is spelled (that is [`crate::json`]'s job).

use std::fmt;

use serde_json::{Map, Value};

use crate::json::{self, JsonError};

/// The fields of one object, in the order they arrived.
pub type Fields = Map<String, Value>;

/// What can be wrong with a body's shape.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error(transparent)]
    Json(#[from] JsonError),
    #[error("body must be a JSON array of commands, found {0}")]
    NotAnArray(&'static str),
    #[error("element {index}: {source}")]
    Element {
        index: usize,
        #[source]
        source: Box<EnvelopeError>,
    },
    #[error("a class-keyed wrapper must be an object with exactly one key, found {0}")]
    NotAWrapper(String),
    #[error("{class:?} wraps {found}, not an object")]
    NotAnObject { class: String, found: &'static str },
    #[error("{0:?} is not a Java class name")]
    BadClassName(String),
}

/// A fully-qualified Java class name as CloudStack's `Class.forName` expects it, e.g.
/// `com.cloud.agent.api.StartCommand`: dot-separated ASCII identifiers (`$` for nested classes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassName(String);

impl ClassName {
    /// Validates `name`; rejects anything `Class.forName` could never load.
    pub fn new(name: impl Into<String>) -> Result<Self, EnvelopeError> {
        let name = name.into();
        if name.split('.').all(is_java_identifier) {
            Ok(ClassName(name))
        } else {
            Err(EnvelopeError::BadClassName(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the last dot, e.g. `StartCommand`.
    pub fn simple_name(&self) -> &str {
        self.0.rsplit('.').next().unwrap_or(&self.0)
    }
}

impl fmt::Display for ClassName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for ClassName {
    type Error = EnvelopeError;
    fn try_from(name: &str) -> Result<Self, EnvelopeError> {
        ClassName::new(name)
    }
}

fn is_java_identifier(segment: &str) -> bool {
    let mut chars = segment.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$');
    starts_well && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

/// One class-keyed object, `{"<class>": {<fields>}}`: a command or answer in a body, or a
/// nested transfer object such as `VolumeObjectTO` inside a `data` field.
#[derive(Debug, Clone, PartialEq)]
pub struct Typed {
    pub class: ClassName,
    pub fields: Fields,
}

impl Typed {
    pub fn new(class: ClassName, fields: Fields) -> Self {
        Typed { class, fields }
    }

    /// Reads a `{"<class>": {...}}` wrapper.
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Object(map) = value else {
            return Err(EnvelopeError::NotAWrapper(kind(&value).to_owned()));
        };
        if map.len() != 1 {
            return Err(EnvelopeError::NotAWrapper(format!(
                "an object with {} keys",
                map.len()
            )));
        }
        let Some((key, inner)) = map.into_iter().next() else {
            return Err(EnvelopeError::NotAWrapper("an empty object".to_owned()));
        };
        let class = ClassName::new(key)?;
        match inner {
            Value::Object(fields) => Ok(Typed { class, fields }),
            other => Err(EnvelopeError::NotAnObject {
                class: class.0,
                found: kind(&other),
            }),
        }
    }

    /// Reads a borrowed wrapper, e.g. a command's `data` field.
    pub fn from_ref(value: &Value) -> Result<Self, EnvelopeError> {
        Typed::from_value(value.clone())
    }

    /// The nested transfer object in field `name`, if that field is present.
    pub fn nested(&self, name: &str) -> Option<Result<Typed, EnvelopeError>> {
        self.fields.get(name).map(Typed::from_ref)
    }

    /// Back to `{"<class>": {...}}`.
    pub fn into_value(self) -> Value {
        let mut map = Map::with_capacity(1);
        map.insert(self.class.0, Value::Object(self.fields));
        Value::Object(map)
    }

    /// `{"<class>": {...}}` without consuming `self`.
    pub fn to_value(&self) -> Value {
        self.clone().into_value()
    }
}

/// A message body: the commands (or answers) of one request, in order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Envelope {
    pub items: Vec<Typed>,
}

impl Envelope {
    pub fn new(items: Vec<Typed>) -> Self {
        Envelope { items }
    }

    /// Parses body bytes: a JSON array of class-keyed objects.
    pub fn parse(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        Envelope::from_value(json::parse(bytes)?)
    }

    /// Interprets an already-parsed body.
    pub fn from_value(value: Value) -> Result<Self, EnvelopeError> {
        let Value::Array(elements) = value else {
            return Err(EnvelopeError::NotAnArray(kind(&value)));
        };
        let items = elements
            .into_iter()
            .enumerate()
            .map(|(index, element)| {
                Typed::from_value(element).map_err(|source| EnvelopeError::Element {
                    index,
                    source: Box::new(source),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Envelope { items })
    }

    /// The body as a JSON array value.
    pub fn to_value(&self) -> Value {
        Value::Array(self.items.iter().map(Typed::to_value).collect())
    }

    /// The body as the ASCII-only, Gson-spelled bytes that go on the wire.
    pub fn to_json(&self) -> Result<Vec<u8>, EnvelopeError> {
        Ok(json::to_ascii_json(&self.to_value())?)
    }

    /// The class names in order, e.g. to answer each command.
    pub fn classes(&self) -> impl Iterator<Item = &ClassName> {
        self.items.iter().map(|item| &item.class)
    }
}

/// A JSON value's kind, for error messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names() {
        assert!(ClassName::new("com.cloud.agent.api.StartCommand").is_ok());
        assert!(ClassName::new("a.Outer$Inner").is_ok());
        assert!(ClassName::new("Default").is_ok());
        for bad in ["", "com..X", ".X", "X.", "1a.B", "a b", "é.B"] {
            assert!(ClassName::new(bad).is_err(), "{bad:?}");
        }
        let name = ClassName::new("com.cloud.agent.api.Answer").unwrap();
        assert_eq!(name.simple_name(), "Answer");
    }

    #[test]
    fn parses_and_writes_nested_wrappers() {
        let text =
            br#"[{"x.Cmd":{"data":{"x.VolumeTO":{"dataStore":{"x.PoolTO":{"id":1}}}},"wait":0}}]"#;
        let envelope = Envelope::parse(text).unwrap();
        let cmd = &envelope.items[0];
        assert_eq!(cmd.class.as_str(), "x.Cmd");
        let volume = cmd.nested("data").unwrap().unwrap();
        assert_eq!(volume.class.as_str(), "x.VolumeTO");
        let pool = volume.nested("dataStore").unwrap().unwrap();
        assert_eq!(pool.fields["id"], 1);
        assert!(cmd.nested("missing").is_none());
        assert!(cmd.nested("wait").unwrap().is_err());
        assert_eq!(envelope.to_json().unwrap(), text);
    }

    #[test]
    fn rejects_bad_shapes() {
        let err = |text: &[u8]| Envelope::parse(text).unwrap_err().to_string();
        assert!(err(b"{}").contains("JSON array"));
        assert!(err(b"[1]").contains("element 0"));
        assert!(err(br#"[{"a.B":{}},{"a.B":{},"c.D":{}}]"#).contains("element 1"));
        assert!(err(br#"[{"a.B":[]}]"#).contains("not an object"));
        assert!(err(br#"[{"not a class":{}}]"#).contains("not a Java class name"));
        assert!(err(b"[{").contains("invalid JSON"));
    }

    #[test]
    fn empty_array_is_an_empty_envelope() {
        let envelope = Envelope::parse(b"[]").unwrap();
        assert!(envelope.items.is_empty());
        assert_eq!(envelope.to_json().unwrap(), b"[]");
    }
}

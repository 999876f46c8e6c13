//! Gson-compatible JSON text: parsing bytes into a [`Value`] and writing a [`Value`] back the way
//! CloudStack's Gson (HTML escaping on) does, but ASCII-only, because both ends decode with the
//! platform charset. It owns escaping, number text and Java's double formatting; it must not
//! know about class-keyed arrays (that is [`crate::envelope`]'s job).
//!
//! Numbers keep their exact digits (serde_json's `arbitrary_precision`) and exponents are written
//! as Java writes them, so `6.5843168E7` read from the MS goes back unchanged; [`java_double`]
//! makes new doubles look the same.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;
use serde_json::{Number, Value};

/// What can be wrong with JSON text.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    #[error("invalid JSON at line {line} column {column}: {source}")]
    Syntax {
        line: usize,
        column: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write JSON: {0}")]
    Write(#[source] serde_json::Error),
    #[error("{0} has no JSON form (Gson rejects NaN and infinities)")]
    NonFinite(f64),
}

/// Parses JSON bytes (UTF-8; CloudStack sends ASCII) into a value, keeping key order and
/// number text.
pub fn parse(bytes: &[u8]) -> Result<Value, JsonError> {
    serde_json::from_slice(bytes).map_err(|source| JsonError::Syntax {
        line: source.line(),
        column: source.column(),
        source,
    })
}

/// Writes `value` as compact, ASCII-only JSON escaped the way Gson escapes.
pub fn to_ascii_json(value: &Value) -> Result<Vec<u8>, JsonError> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, GsonFormatter);
    value.serialize(&mut ser).map_err(JsonError::Write)?;
    Ok(out)
}

/// The characters Gson's HTML-safe writer escapes although they are ASCII.
fn is_html_sensitive(c: char) -> bool {
    matches!(c, '<' | '>' | '&' | '=' | '\'')
}

/// Compact output plus Gson's escapes and Java's exponent spelling. serde_json already escapes `"`, `\` and control
/// characters as Gson does (`\n`, `\t`, `\b`, `\f`, `\r`, otherwise lowercase `\u00xx`);
/// this adds the HTML-sensitive characters and everything outside ASCII.
struct GsonFormatter;

impl Formatter for GsonFormatter {
    fn write_string_fragment<W>(&mut self, writer: &mut W, fragment: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() && !is_html_sensitive(c) {
                continue;
            }
            writer.write_all(&fragment.as_bytes()[start..i])?;
            write_utf16_escapes(writer, c)?;
            start = i + c.len_utf8();
        }
        writer.write_all(&fragment.as_bytes()[start..])
    }

    /// serde_json stores an exponent as `e+7`/`e-4` whatever the input said; Java's
    /// `Double.toString` (and so Gson) writes `E7`/`E-4`, so that is what goes out.
    fn write_number_str<W>(&mut self, writer: &mut W, value: &str) -> io::Result<()>
    where
        W: ?Sized + io::Write,
    {
        match value.split_once(['e', 'E']) {
            Some((mantissa, exp)) => {
                let exp = exp.strip_prefix('+').unwrap_or(exp);
                write!(writer, "{mantissa}E{exp}")
            }
            None => writer.write_all(value.as_bytes()),
        }
    }
}

/// `\uxxxx` per UTF-16 unit (a surrogate pair above U+FFFF), lowercase as Gson writes them.
fn write_utf16_escapes<W: ?Sized + io::Write>(writer: &mut W, c: char) -> io::Result<()> {
    let mut units = [0u16; 2];
    for unit in c.encode_utf16(&mut units) {
        write!(writer, "\\u{unit:04x}")?;
    }
    Ok(())
}

/// A JSON number spelled as Java's `Double.toString` spells `value` (which Gson uses):
/// `1.0`, `0.001`, `6.5843168E7`, `1.0E-4`. Shortest round-trip digits, as in JDK 19 and later.
pub fn java_double(value: f64) -> Result<Number, JsonError> {
    if !value.is_finite() {
        return Err(JsonError::NonFinite(value));
    }
    let text = java_double_text(value);
    // Valid JSON by construction; parsing keeps the digits and the writer spells the exponent.
    serde_json::from_str(&text).map_err(|source| JsonError::Syntax {
        line: source.line(),
        column: source.column(),
        source,
    })
}

/// The text of [`java_double`], for a finite value.
fn java_double_text(value: f64) -> String {
    let sign = if value.is_sign_negative() { "-" } else { "" };
    let abs = value.abs();
    if abs == 0.0 {
        return format!("{sign}0.0");
    }
    // Rust's `{:e}` gives the shortest round-trip digits, e.g. "6.5843168e7" or "1e-4".
    let sci = format!("{abs:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    if (1e-3..1e7).contains(&abs) {
        format!("{sign}{}", plain_decimal(&digits, exp))
    } else {
        let (first, rest) = digits.split_at(1);
        let rest = if rest.is_empty() { "0" } else { rest };
        format!("{sign}{first}.{rest}E{exp}")
    }
}

/// `digits` (d.ddd × 10^exp, -3 <= exp < 7) as a plain decimal with at least one fraction digit.
fn plain_decimal(digits: &str, exp: i32) -> String {
    if exp < 0 {
        let zeros = "0".repeat(exp.unsigned_abs() as usize - 1);
        return format!("0.{zeros}{digits}");
    }
    let int_len = exp as usize + 1;
    if digits.len() > int_len {
        let (int, frac) = digits.split_at(int_len);
        format!("{int}.{frac}")
    } else {
        format!("{digits}{}.0", "0".repeat(int_len - digits.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn write(value: &Value) -> String {
        String::from_utf8(to_ascii_json(value).unwrap()).unwrap()
    }

    #[test]
    fn escapes_like_gson_html_safe() {
        let v = json!({"k": "a=b&c<d>e'f\"g\\h/i\n\t\u{1}"});
        assert_eq!(
            write(&v),
            r#"{"k":"a\u003db\u0026c\u003cd\u003ee\u0027f\"g\\h/i\n\t\u0001"}"#
        );
    }

    #[test]
    fn escapes_non_ascii_as_utf16_units() {
        let v = json!(["é", "\u{2028}", "😀"]);
        assert_eq!(write(&v), r#"["\u00e9","\u2028","\ud83d\ude00"]"#);
        assert!(to_ascii_json(&v).unwrap().is_ascii());
    }

    #[test]
    fn keys_are_escaped_too() {
        assert_eq!(write(&json!({"a=b": 1})), r#"{"a\u003db":1}"#);
    }

    #[test]
    fn number_text_survives() {
        let text = br#"{"a":6.5843168E7,"b":2097152.0,"c":-1,"d":1.0E-4,"e":9223372036854775807}"#;
        assert_eq!(to_ascii_json(&parse(text).unwrap()).unwrap(), text);
    }

    #[test]
    fn exponents_are_written_the_java_way() {
        let text = br#"[1e5,1E+5,2.5e-3,-1.0E10]"#;
        assert_eq!(write(&parse(text).unwrap()), "[1E5,1E5,2.5E-3,-1.0E10]");
    }

    #[test]
    fn java_double_matches_double_to_string() {
        let cases = [
            (6.5843168e7, "6.5843168E7"),
            (2097152.0, "2097152.0"),
            (1.0, "1.0"),
            (0.1, "0.1"),
            (0.001, "0.001"),
            (0.0001, "1.0E-4"),
            (1e7, "1.0E7"),
            (9999999.0, "9999999.0"),
            (123.456, "123.456"),
            (-0.0, "-0.0"),
            (0.0, "0.0"),
            (-2.5e-10, "-2.5E-10"),
            (1.7976931348623157e308, "1.7976931348623157E308"),
        ];
        for (value, text) in cases {
            let number = Value::Number(java_double(value).unwrap());
            assert_eq!(write(&number), text, "{value}");
        }
        assert!(java_double(f64::NAN).is_err());
        assert!(java_double(f64::INFINITY).is_err());
    }

    #[test]
    fn invalid_json_names_the_position() {
        let err = parse(b"[{\"a\":}]").unwrap_err();
        assert!(
            matches!(
                err,
                JsonError::Syntax {
                    line: 1,
                    column: 7,
                    ..
                }
            ),
            "{err}"
        );
        assert!(parse(b"").is_err());
        assert!(parse(b"[1] x").is_err());
    }
}

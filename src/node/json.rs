//! Node's `serialization: "json"` IPC form: `JSON.stringify(message)` and `JSON.parse(line)`.
//!
//! [`to_json`] gives exactly the text `JSON.stringify` gives for the same JavaScript value: properties
//! in JavaScript's order (array indices ascending, then the other keys in insertion order), `undefined`
//! properties dropped and `undefined` elements as `null`, non-finite numbers as `null`, numbers in
//! JavaScript's shortest form, a Date as its `toISOString()`, a `Buffer` as
//! `{"type":"Buffer","data":[…]}`, other typed arrays as `{"0":…,"1":…}`, and Maps, Sets, RegExps,
//! Errors, ArrayBuffers and DataViews as `{}`. A BigInt anywhere is an error, as it is a `TypeError`
//! in JavaScript, and so is `undefined` at the top (which `JSON.stringify` turns into no text at all).
//!
//! [`from_json`] parses exactly what `JSON.parse` accepts. Objects keep their keys in text order (a
//! repeated key keeps its first position and its last value, as in JavaScript), integers in `i32`
//! range become [`Value::Int`] (except `-0`) and other numbers [`Value::Number`].
//!
//! Strings round-trip exactly: `JSON.stringify` writes an unpaired surrogate as a `\udxxx` escape,
//! [`from_json`] reads it back into a [`Value::Utf16`], and [`to_json`] escapes it the same way; every
//! other character is written as itself except `"`, `\` and control characters.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use crate::node::value::{Key, Value, ViewKind, array_index, number_to_js_string};

/// How deeply [`from_json`] lets values nest, as [`super::v8::MAX_DEPTH`] does.
pub const MAX_DEPTH: usize = 256;

/// The longest sparse array [`to_json`] writes out (as `null`s and elements). Node itself gives up
/// near 100 million elements, when the text reaches V8's maximal string length.
pub const MAX_SPARSE_LENGTH: u32 = 1 << 24;

/// Why a value has no JSON text or a text is not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The text is not JSON.
    #[error("invalid JSON at byte {offset}: {what}")]
    Syntax {
        /// Byte offset in the text.
        offset: usize,
        /// What was expected or wrong.
        what: &'static str,
    },
    /// The text nests deeper than [`MAX_DEPTH`].
    #[error("JSON nested deeper than {MAX_DEPTH} at byte {offset}")]
    TooDeep {
        /// Byte offset in the text.
        offset: usize,
    },
    /// The value holds a BigInt (`TypeError: Do not know how to serialize a BigInt`).
    #[error("a BigInt has no JSON form")]
    BigInt,
    /// The value is `undefined`, which has no JSON text.
    #[error("undefined has no JSON form")]
    Undefined,
    /// A sparse array longer than [`MAX_SPARSE_LENGTH`].
    #[error("an array of length {0} is too long to write as JSON")]
    TooLong(u32),
}

/// `JSON.stringify(value)` (see the module docs).
pub fn to_json(value: &Value) -> Result<String, Error> {
    let mut out = String::new();
    to_json_into(value, &mut out)?;
    Ok(out)
}

/// Appends `JSON.stringify(value)` to `out` (on error, `out` may hold part of it).
pub fn to_json_into(value: &Value, out: &mut String) -> Result<(), Error> {
    let written = Stringifier { out }.value(value)?;
    if written { Ok(()) } else { Err(Error::Undefined) }
}

/// `JSON.parse(text)` (see the module docs).
pub fn from_json(text: &str) -> Result<Value, Error> {
    let mut parser = Parser { text: text.as_bytes(), src: text, pos: 0, depth: 0 };
    let value = parser.value()?;
    parser.whitespace();
    if parser.pos < parser.text.len() {
        return Err(parser.fail("unexpected text after the value"));
    }
    Ok(value)
}

/// A property name, compared as JavaScript compares keys.
#[derive(PartialEq, Eq, Hash, Clone)]
enum Name<'a> {
    Str(Cow<'a, str>),
    Units(&'a [u16]),
}

impl<'a> Name<'a> {
    fn of(key: &'a Key) -> Self {
        match key {
            Key::Utf16(units) => Name::Units(units),
            other => Name::Str(other.to_js_string()),
        }
    }

    fn index(&self) -> Option<u32> {
        match self {
            Name::Str(s) => array_index(s),
            Name::Units(_) => None,
        }
    }
}

/// The properties of an object in JavaScript's enumeration order, each key once with its last value.
fn js_order(entries: &[(Key, Value)]) -> Vec<(Name<'_>, &Value)> {
    let mut order: Vec<(Name<'_>, &Value)> = Vec::with_capacity(entries.len());
    let mut seen: HashMap<Name<'_>, usize> = HashMap::new();
    for (key, value) in entries {
        let name = Name::of(key);
        match seen.get(&name) {
            Some(&at) => order[at].1 = value,
            None => {
                seen.insert(name.clone(), order.len());
                order.push((name, value));
            }
        }
    }
    // Stable: the named keys keep their insertion order.
    order.sort_by_key(|(name, _)| name.index().map_or((1, 0), |i| (0, i)));
    order
}

struct Stringifier<'o> {
    out: &'o mut String,
}

impl Stringifier<'_> {
    /// Writes `value`; false (and nothing written) if it is `undefined` to JSON.
    fn value(&mut self, value: &Value) -> Result<bool, Error> {
        match value {
            Value::Undefined | Value::Hole => return Ok(false),
            Value::Null => self.out.push_str("null"),
            Value::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            Value::Int(n) => push_int(self.out, i64::from(*n)),
            Value::Number(n) => self.number(*n),
            Value::BigInt(_) => return Err(Error::BigInt),
            Value::String(s) => self.string(s),
            Value::Utf16(units) => self.units(units),
            Value::Object(entries) => self.object(js_order(entries))?,
            Value::Array(items) => self.array(items.iter().map(Some))?,
            Value::SparseArray { length, entries } => {
                if *length > MAX_SPARSE_LENGTH {
                    return Err(Error::TooLong(*length));
                }
                let mut items: Vec<Option<&Value>> = vec![None; *length as usize];
                for (name, value) in js_order(entries) {
                    if let Some(slot) = name.index().and_then(|i| items.get_mut(i as usize)) {
                        *slot = Some(value);
                    }
                }
                self.array(items.into_iter())?;
            }
            Value::Map(_) | Value::Set(_) | Value::RegExp { .. } | Value::Error(_) | Value::ArrayBuffer(_) => {
                self.out.push_str("{}");
            }
            Value::Date(ms) => match iso_date(*ms) {
                Some(iso) => self.string(&iso),
                None => self.out.push_str("null"),
            },
            Value::View { kind, bytes } => self.view(*kind, bytes)?,
            Value::Wrapper(inner) => match &**inner {
                Value::BigInt(_) => return Err(Error::BigInt),
                other => return self.value(other),
            },
        }
        Ok(true)
    }

    fn number(&mut self, n: f64) {
        if n.is_finite() {
            self.out.push_str(&number_to_js_string(n));
        } else {
            self.out.push_str("null");
        }
    }

    fn object(&mut self, properties: Vec<(Name<'_>, &Value)>) -> Result<(), Error> {
        self.out.push('{');
        let mut first = true;
        for (name, value) in properties {
            let mark = self.out.len();
            if !first {
                self.out.push(',');
            }
            match &name {
                Name::Str(s) => self.string(s),
                Name::Units(units) => self.units(units),
            }
            self.out.push(':');
            if self.value(value)? {
                first = false;
            } else {
                self.out.truncate(mark);
            }
        }
        self.out.push('}');
        Ok(())
    }

    fn array<'v>(&mut self, items: impl Iterator<Item = Option<&'v Value>>) -> Result<(), Error> {
        self.out.push('[');
        for (i, item) in items.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            let written = match item {
                Some(value) => self.value(value)?,
                None => false,
            };
            if !written {
                self.out.push_str("null");
            }
        }
        self.out.push(']');
        Ok(())
    }

    fn view(&mut self, kind: ViewKind, bytes: &[u8]) -> Result<(), Error> {
        fn each<const N: usize>(bytes: &[u8], f: impl Fn([u8; N]) -> f64) -> impl Iterator<Item = f64> {
            bytes.chunks_exact(N).map(move |c| {
                let mut raw = [0u8; N];
                raw.copy_from_slice(c);
                f(raw)
            })
        }
        let numbers: Box<dyn Iterator<Item = f64>> = match kind {
            ViewKind::Buffer => {
                self.out.push_str(r#"{"type":"Buffer","data":["#);
                for (i, b) in bytes.iter().enumerate() {
                    if i > 0 {
                        self.out.push(',');
                    }
                    push_int(self.out, i64::from(*b));
                }
                self.out.push_str("]}");
                return Ok(());
            }
            ViewKind::DataView => Box::new(std::iter::empty()),
            ViewKind::BigInt64Array | ViewKind::BigUint64Array if bytes.len() >= 8 => return Err(Error::BigInt),
            ViewKind::BigInt64Array | ViewKind::BigUint64Array => Box::new(std::iter::empty()),
            ViewKind::Int8Array => Box::new(bytes.iter().map(|&b| f64::from(b as i8))),
            ViewKind::Uint8Array | ViewKind::Uint8ClampedArray => Box::new(bytes.iter().map(|&b| f64::from(b))),
            ViewKind::Int16Array => Box::new(each(bytes, |b| f64::from(i16::from_le_bytes(b)))),
            ViewKind::Uint16Array => Box::new(each(bytes, |b| f64::from(u16::from_le_bytes(b)))),
            ViewKind::Int32Array => Box::new(each(bytes, |b| f64::from(i32::from_le_bytes(b)))),
            ViewKind::Uint32Array => Box::new(each(bytes, |b| f64::from(u32::from_le_bytes(b)))),
            ViewKind::Float32Array => Box::new(each(bytes, |b| f64::from(f32::from_le_bytes(b)))),
            ViewKind::Float64Array => Box::new(each(bytes, f64::from_le_bytes)),
        };
        self.out.push('{');
        for (i, n) in numbers.enumerate() {
            if i > 0 {
                self.out.push(',');
            }
            self.out.push('"');
            push_int(self.out, i as i64);
            self.out.push_str("\":");
            self.number(n);
        }
        self.out.push('}');
        Ok(())
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        let mut plain = 0;
        for (i, c) in s.char_indices() {
            if c < ' ' || c == '"' || c == '\\' {
                self.out.push_str(&s[plain..i]);
                self.escape(c as u16);
                plain = i + 1;
            }
        }
        self.out.push_str(&s[plain..]);
        self.out.push('"');
    }

    fn units(&mut self, units: &[u16]) {
        self.out.push('"');
        for c in char::decode_utf16(units.iter().copied()) {
            match c {
                Ok(c) if c < ' ' || c == '"' || c == '\\' => self.escape(c as u16),
                Ok(c) => self.out.push(c),
                Err(lone) => self.escape(lone.unpaired_surrogate()),
            }
        }
        self.out.push('"');
    }

    /// The escape `JSON.stringify` uses for this code unit.
    fn escape(&mut self, unit: u16) {
        match unit {
            0x08 => self.out.push_str("\\b"),
            0x09 => self.out.push_str("\\t"),
            0x0a => self.out.push_str("\\n"),
            0x0c => self.out.push_str("\\f"),
            0x0d => self.out.push_str("\\r"),
            0x22 => self.out.push_str("\\\""),
            0x5c => self.out.push_str("\\\\"),
            u => self.out.push_str(&format!("\\u{u:04x}")),
        }
    }
}

/// Appends the decimal form of `n`.
fn push_int(out: &mut String, n: i64) {
    // Writing to a String cannot fail.
    let _ = write!(out, "{n}");
}

/// `Date.prototype.toISOString` of a time value after V8's TimeClip, or `None` for an invalid date.
fn iso_date(ms: f64) -> Option<String> {
    if !ms.is_finite() || ms.abs() > 8.64e15 {
        return None;
    }
    // Within ±8.64e15 the truncated value is an exact integer.
    let t = ms.trunc() as i64;
    let (days, ms) = (t.div_euclid(86_400_000), t.rem_euclid(86_400_000));
    let (year, month, day) = civil_from_days(days);
    let year = match year {
        0..=9999 => format!("{year:04}"),
        y if y > 0 => format!("+{y:06}"),
        y => format!("-{:06}", -y),
    };
    let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
    Some(format!("{year}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{ms:03}Z"))
}

/// The proleptic Gregorian date of a day number counted from 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

struct Parser<'a> {
    text: &'a [u8],
    src: &'a str,
    pos: usize,
    depth: usize,
}

/// A string being parsed: UTF-8 until an unpaired surrogate turns up.
enum StrBuf {
    Utf8(String),
    Utf16(Vec<u16>),
}

impl StrBuf {
    fn push_str(&mut self, s: &str) {
        match self {
            StrBuf::Utf8(buf) => buf.push_str(s),
            StrBuf::Utf16(units) => units.extend(s.encode_utf16()),
        }
    }

    fn push_unit(&mut self, unit: u16) {
        match self {
            StrBuf::Utf8(buf) => match char::from_u32(u32::from(unit)) {
                Some(c) => buf.push(c),
                None => {
                    let mut units: Vec<u16> = buf.encode_utf16().collect();
                    units.push(unit);
                    *self = StrBuf::Utf16(units);
                }
            },
            StrBuf::Utf16(units) => units.push(unit),
        }
    }
}

impl Parser<'_> {
    fn fail(&self, what: &'static str) -> Error {
        Error::Syntax { offset: self.pos, what }
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.text.get(self.pos) {
            self.pos += 1;
        }
    }

    fn eat(&mut self, byte: u8) -> bool {
        let found = self.text.get(self.pos) == Some(&byte);
        if found {
            self.pos += 1;
        }
        found
    }

    fn literal(&mut self, word: &'static str, value: Value) -> Result<Value, Error> {
        if self.text[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.fail("unknown literal"))
        }
    }

    fn value(&mut self) -> Result<Value, Error> {
        self.whitespace();
        match self.text.get(self.pos) {
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(match self.string()? {
                StrBuf::Utf8(s) => Value::String(s),
                StrBuf::Utf16(units) => Value::from_utf16(&units),
            }),
            Some(b't') => self.literal("true", Value::Bool(true)),
            Some(b'f') => self.literal("false", Value::Bool(false)),
            Some(b'n') => self.literal("null", Value::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.fail("expected a value")),
            None => Err(self.fail("unexpected end")),
        }
    }

    fn nested(&mut self, parse: fn(&mut Self) -> Result<Value, Error>) -> Result<Value, Error> {
        if self.depth >= MAX_DEPTH {
            return Err(Error::TooDeep { offset: self.pos });
        }
        self.depth += 1;
        self.pos += 1;
        let value = parse(self);
        self.depth -= 1;
        value
    }

    fn object(&mut self) -> Result<Value, Error> {
        let mut entries = Vec::new();
        self.whitespace();
        if !self.eat(b'}') {
            loop {
                self.whitespace();
                if self.text.get(self.pos) != Some(&b'"') {
                    return Err(self.fail("expected a property name"));
                }
                let key = match self.string()? {
                    StrBuf::Utf8(s) => Key::String(s),
                    StrBuf::Utf16(units) => match Value::from_utf16(&units) {
                        Value::String(s) => Key::String(s),
                        _ => Key::Utf16(units),
                    },
                };
                self.whitespace();
                if !self.eat(b':') {
                    return Err(self.fail("expected ':'"));
                }
                entries.push((key, self.value()?));
                self.whitespace();
                if self.eat(b'}') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(self.fail("expected ',' or '}'"));
                }
            }
        }
        Ok(Value::Object(dedupe(entries)))
    }

    fn array(&mut self) -> Result<Value, Error> {
        let mut items = Vec::new();
        self.whitespace();
        if !self.eat(b']') {
            loop {
                items.push(self.value()?);
                self.whitespace();
                if self.eat(b']') {
                    break;
                }
                if !self.eat(b',') {
                    return Err(self.fail("expected ',' or ']'"));
                }
            }
        }
        Ok(Value::Array(items))
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while self.text.get(self.pos).is_some_and(u8::is_ascii_digit) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.pos;
        self.eat(b'-');
        if self.eat(b'0') {
            if self.text.get(self.pos).is_some_and(u8::is_ascii_digit) {
                return Err(self.fail("leading zero"));
            }
        } else if self.digits() == 0 {
            return Err(self.fail("expected a digit"));
        }
        if self.eat(b'.') && self.digits() == 0 {
            return Err(self.fail("expected a digit after '.'"));
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return Err(self.fail("expected an exponent"));
            }
        }
        let n: f64 = self.src[start..self.pos].parse().map_err(|_| self.fail("bad number"))?;
        let integral = n.fract() == 0.0 && !(n == 0.0 && n.is_sign_negative());
        let in_range = (f64::from(i32::MIN)..=f64::from(i32::MAX)).contains(&n);
        // Integral and in range, so the cast is exact.
        Ok(if integral && in_range { Value::Int(n as i32) } else { Value::Number(n) })
    }

    fn hex4(&mut self) -> Result<u16, Error> {
        let digits = self.text.get(self.pos..self.pos + 4).ok_or_else(|| self.fail("short \\u escape"))?;
        let mut unit = 0u16;
        for &d in digits {
            let v = char::from(d).to_digit(16).ok_or_else(|| self.fail("bad \\u escape"))?;
            // A hex digit is below 16.
            unit = unit << 4 | v as u16;
        }
        self.pos += 4;
        Ok(unit)
    }

    /// If `unit` is a high surrogate and a `\\u` escape of a low one follows, consumes it and gives
    /// the character of the pair.
    fn low_surrogate_after(&mut self, unit: u16) -> Option<char> {
        if !(0xd800..0xdc00).contains(&unit) || !self.text[self.pos..].starts_with(b"\\u") {
            return None;
        }
        let resume = self.pos;
        self.pos += 2;
        match self.hex4() {
            Ok(low @ 0xdc00..0xe000) => char::decode_utf16([unit, low]).next().and_then(Result::ok),
            _ => {
                self.pos = resume;
                None
            }
        }
    }

    /// A string starting at its opening quote.
    fn string(&mut self) -> Result<StrBuf, Error> {
        self.pos += 1;
        let mut buf = StrBuf::Utf8(String::new());
        loop {
            let start = self.pos;
            while let Some(&b) = self.text.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            // The loop stops only at ASCII bytes, so this is on character boundaries.
            buf.push_str(&self.src[start..self.pos]);
            match self.text.get(self.pos) {
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(buf);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escaped = self.text.get(self.pos).copied().ok_or_else(|| self.fail("unexpected end"))?;
                    self.pos += 1;
                    let simple = match escaped {
                        b'"' => "\"",
                        b'\\' => "\\",
                        b'/' => "/",
                        b'b' => "\u{8}",
                        b'f' => "\u{c}",
                        b'n' => "\n",
                        b'r' => "\r",
                        b't' => "\t",
                        b'u' => {
                            let unit = self.hex4()?;
                            match self.low_surrogate_after(unit) {
                                Some(c) => buf.push_str(c.encode_utf8(&mut [0; 4])),
                                None => buf.push_unit(unit),
                            }
                            continue;
                        }
                        _ => {
                            self.pos -= 1;
                            return Err(self.fail("bad escape"));
                        }
                    };
                    buf.push_str(simple);
                }
                Some(_) => return Err(self.fail("control character in string")),
                None => return Err(self.fail("unterminated string")),
            }
        }
    }
}

/// Object entries with each key once, at its first position, with its last value (`JSON.parse`).
fn dedupe(entries: Vec<(Key, Value)>) -> Vec<(Key, Value)> {
    if entries.len() < 2 {
        return entries;
    }
    let mut slots = Vec::with_capacity(entries.len());
    let mut distinct = 0;
    {
        let mut first: HashMap<Name<'_>, usize> = HashMap::with_capacity(entries.len());
        for (key, _) in &entries {
            let slot = *first.entry(Name::of(key)).or_insert_with(|| {
                distinct += 1;
                distinct - 1
            });
            slots.push(slot);
        }
    }
    if distinct == entries.len() {
        return entries;
    }
    let mut out: Vec<Option<(Key, Value)>> = (0..distinct).map(|_| None).collect();
    for ((key, value), slot) in entries.into_iter().zip(slots) {
        match &mut out[slot] {
            Some(entry) => entry.1 = value,
            empty => *empty = Some((key, value)),
        }
    }
    out.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::value::BigInt;

    #[test]
    fn stringify_like_javascript() {
        let v = Value::object([
            ("b", 1.into()),
            ("2", Value::Undefined),
            ("1", Value::Array(vec![Value::Undefined, Value::Hole, Value::Number(f64::NAN), (-0.0).into()])),
            ("s", "a\"\\\n\u{1}\u{7f}\u{2028}é😀".into()),
            ("u", Value::Utf16(vec![0xd800, 0x61, 0xdfff])),
            ("d", Value::Date(0.0)),
            ("buf", Value::buffer(vec![1, 255])),
            ("i16", Value::View { kind: ViewKind::Int16Array, bytes: vec![0xff, 0xff, 2, 0] }),
            ("m", Value::Map(vec![(1.into(), 2.into())])),
            ("w", Value::Wrapper(Box::new("x".into()))),
        ]);
        let want = concat!(
            r#"{"1":[null,null,null,0],"b":1,"s":"a\"\\\n\u0001"#,
            "\u{7f}\u{2028}é😀",
            r#"","u":"\ud800a\udfff","d":"1970-01-01T00:00:00.000Z","buf":{"type":"Buffer","data":[1,255]},"#,
            r#""i16":{"0":-1,"1":2},"m":{},"w":"x"}"#
        );
        assert_eq!(to_json(&v).as_deref(), Ok(want));
        assert_eq!(to_json(&Value::Undefined), Err(Error::Undefined));
        assert_eq!(to_json(&Value::array([Value::BigInt(BigInt::from_i128(1))])), Err(Error::BigInt));
        let sparse = Value::SparseArray { length: 3, entries: vec![(Key::Int(1), 5.into()), ("x".into(), 1.into())] };
        assert_eq!(to_json(&sparse).as_deref(), Ok("[null,5,null]"));
        let huge = Value::SparseArray { length: u32::MAX - 1, entries: vec![] };
        assert_eq!(to_json(&huge), Err(Error::TooLong(u32::MAX - 1)));
    }

    #[test]
    fn iso_dates() {
        assert_eq!(iso_date(0.0).as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert_eq!(iso_date(-1.0).as_deref(), Some("1969-12-31T23:59:59.999Z"));
        assert_eq!(iso_date(951_782_400_000.5).as_deref(), Some("2000-02-29T00:00:00.000Z"));
        assert_eq!(iso_date(8.64e15).as_deref(), Some("+275760-09-13T00:00:00.000Z"));
        assert_eq!(iso_date(-8.64e15).as_deref(), Some("-271821-04-20T00:00:00.000Z"));
        assert_eq!(iso_date(-62_198_755_200_000.0).as_deref(), Some("-000001-01-01T00:00:00.000Z"));
        assert_eq!(iso_date(8.64e15 + 1.0), None);
        assert_eq!(iso_date(f64::NAN), None);
    }

    #[test]
    fn parse_like_javascript() {
        let v =
            from_json(r#" {"a":1,"b":[true,false,null,-0,1.5e3,2147483648,-2147483648],"a":"\ud83d\ude00\ud800"} "#);
        let want = Value::object([
            ("a", Value::Utf16(vec![0xd83d, 0xde00, 0xd800])),
            (
                "b",
                Value::array([
                    true.into(),
                    false.into(),
                    Value::Null,
                    Value::Number(-0.0),
                    Value::Int(1500),
                    Value::Number(2_147_483_648.0),
                    Value::Int(i32::MIN),
                ]),
            ),
        ]);
        assert_eq!(format!("{v:?}"), format!("{:?}", Ok::<_, Error>(want)));
        assert_eq!(from_json(r#""\ud83d\ude00\u00e9\/""#), Ok(Value::String("😀é/".into())));
        assert_eq!(from_json(r#"{"\udc00":1}"#), Ok(Value::Object(vec![(Key::Utf16(vec![0xdc00]), 1.into())])));
        for bad in ["", "01", "1.", ".5", "+1", "[1,]", "{\"a\"}", "\"\u{1}\"", "\"\\x\"", "tru", "1 2", "[", "\"\\ud8"]
        {
            assert!(matches!(from_json(bad), Err(Error::Syntax { .. })), "{bad:?}");
        }
        let deep = "[".repeat(MAX_DEPTH + 1);
        assert!(matches!(from_json(&deep), Err(Error::TooDeep { .. })));
        assert!(from_json(&format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH))).is_ok());
    }

    #[test]
    fn text_round_trips() {
        for text in [
            concat!(
                r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"#,
                r#""port":3000,"addressType":4,"fd":null,"flags":0,"backlog":false,"seq":0}"#
            ),
            r#"{"type":"Buffer","data":[1,2,3]}"#,
            r#"["\ud800","\u001f",1e+21,1.5e-7,-1.5,0.1]"#,
            r#"{"2":1,"10":2,"a":3,"4294967295":4}"#,
        ] {
            let v = from_json(text).expect("valid JSON");
            assert_eq!(to_json(&v).as_deref(), Ok(text));
        }
    }
}

//! The encoder: writes what V8 would write for the same JavaScript value, so that payloads that came
//! from Node re-encode to the same bytes (apart from the version in the header).

use super::{Dialect, VERSION, tag};
use crate::node::value::{BigInt, ErrorName, Key, Value};

/// The largest length the format can state.
const MAX_LEN: usize = u32::MAX as usize;
/// The largest bigint V8 accepts, in bytes (a 30-bit length field).
const MAX_BIGINT_LEN: usize = (1 << 30) - 1;

pub(super) struct Writer<'o> {
    out: &'o mut Vec<u8>,
    /// Where the payload starts in `out`: alignment is relative to it.
    base: usize,
    dialect: Dialect,
}

impl<'o> Writer<'o> {
    pub(super) fn new(out: &'o mut Vec<u8>, dialect: Dialect) -> Self {
        let base = out.len();
        Writer { out, base, dialect }
    }

    /// The header and `value`.
    pub(super) fn payload(mut self, value: &Value) {
        self.out.push(tag::VERSION);
        self.varint(VERSION);
        self.value(value);
    }

    fn varint(&mut self, mut n: u32) {
        while n >= 0x80 {
            self.out.push((n as u8) | 0x80);
            n >>= 7;
        }
        self.out.push(n as u8);
    }

    /// A length, which the caller has already clamped to [`MAX_LEN`].
    fn len(&mut self, n: usize) {
        self.varint(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn double(&mut self, n: f64) {
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    fn int(&mut self, n: i32) {
        self.out.push(tag::INT32);
        self.varint(((n << 1) ^ (n >> 31)) as u32);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        let bytes = &bytes[..bytes.len().min(MAX_LEN)];
        self.len(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    /// A string as V8 writes a flat one: Latin-1 if every character fits, else UTF-16LE with a `00`
    /// before the tag when that makes the character data start at an even offset.
    fn string(&mut self, s: &str) {
        if s.is_ascii() {
            // The common case (every key, most values): the bytes are the Latin-1 characters.
            let n = s.len().min(MAX_LEN);
            self.out.push(tag::ONE_BYTE_STRING);
            self.len(n);
            self.out.extend_from_slice(&s.as_bytes()[..n]);
        } else if s.chars().all(|c| u32::from(c) <= 0xff) {
            let n = s.chars().count().min(MAX_LEN);
            self.out.push(tag::ONE_BYTE_STRING);
            self.len(n);
            // Every character is at most U+00FF, so the cast is Latin-1.
            self.out.extend(s.chars().take(n).map(|c| u32::from(c) as u8));
        } else {
            self.two_byte(s.encode_utf16(), s.encode_utf16().count());
        }
    }

    fn utf16(&mut self, units: &[u16]) {
        if units.iter().all(|&u| u <= 0xff) {
            let n = units.len().min(MAX_LEN);
            self.out.push(tag::ONE_BYTE_STRING);
            self.len(n);
            self.out.extend(units[..n].iter().map(|&u| u as u8));
        } else {
            self.two_byte(units.iter().copied(), units.len());
        }
    }

    fn two_byte(&mut self, units: impl Iterator<Item = u16>, count: usize) {
        let count = count.min(MAX_LEN / 2);
        let byte_len = u32::try_from(count * 2).unwrap_or(u32::MAX - 1);
        let varint_len = (32 - byte_len.leading_zeros()).div_ceil(7).max(1) as usize;
        if (self.out.len() - self.base + 1 + varint_len) % 2 == 1 {
            self.out.push(tag::PADDING);
        }
        self.out.push(tag::TWO_BYTE_STRING);
        self.varint(byte_len);
        for unit in units.take(count) {
            self.out.extend_from_slice(&unit.to_le_bytes());
        }
    }

    fn key(&mut self, key: &Key) {
        match key {
            Key::String(s) => self.string(s),
            Key::Utf16(units) => self.utf16(units),
            Key::Int(n) => self.int(*n),
            Key::Number(n) => {
                self.out.push(tag::DOUBLE);
                self.double(*n);
            }
        }
    }

    fn bigint(&mut self, n: &BigInt) {
        let digits = &n.magnitude[..n.magnitude.len().min(MAX_BIGINT_LEN)];
        // Bounded by MAX_BIGINT_LEN, so the shift cannot overflow.
        self.varint(((digits.len() as u32) << 1) | u32::from(n.negative));
        self.out.extend_from_slice(digits);
    }

    /// A property value or Map/Set member: a hole there reads as undefined.
    fn member(&mut self, value: &Value) {
        match value {
            Value::Hole => self.out.push(tag::UNDEFINED),
            v => self.value(v),
        }
    }

    fn properties(&mut self, entries: &[(Key, Value)]) {
        for (key, value) in entries {
            self.key(key);
            self.member(value);
        }
    }

    fn count(&mut self, n: usize) {
        self.varint(u32::try_from(n).unwrap_or(u32::MAX));
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Undefined | Value::Hole => self.out.push(tag::UNDEFINED),
            Value::Null => self.out.push(tag::NULL),
            Value::Bool(true) => self.out.push(tag::TRUE),
            Value::Bool(false) => self.out.push(tag::FALSE),
            Value::Int(n) => self.int(*n),
            Value::Number(n) => {
                self.out.push(tag::DOUBLE);
                self.double(*n);
            }
            Value::BigInt(n) => {
                self.out.push(tag::BIGINT);
                self.bigint(n);
            }
            Value::String(s) => self.string(s),
            Value::Utf16(units) => self.utf16(units),
            Value::Object(entries) => {
                self.out.push(tag::BEGIN_OBJECT);
                self.properties(entries);
                self.out.push(tag::END_OBJECT);
                self.count(entries.len());
            }
            Value::Array(items) => {
                self.out.push(tag::BEGIN_DENSE_ARRAY);
                self.count(items.len());
                for item in items {
                    match item {
                        Value::Hole => self.out.push(tag::HOLE),
                        v => self.value(v),
                    }
                }
                self.out.push(tag::END_DENSE_ARRAY);
                self.count(0);
                self.count(items.len());
            }
            Value::SparseArray { length, entries } => {
                self.out.push(tag::BEGIN_SPARSE_ARRAY);
                self.varint(*length);
                self.properties(entries);
                self.out.push(tag::END_SPARSE_ARRAY);
                self.count(entries.len());
                self.varint(*length);
            }
            Value::Map(entries) => {
                self.out.push(tag::BEGIN_MAP);
                for (key, value) in entries {
                    self.member(key);
                    self.member(value);
                }
                self.out.push(tag::END_MAP);
                self.count(entries.len().saturating_mul(2));
            }
            Value::Set(items) => {
                self.out.push(tag::BEGIN_SET);
                for item in items {
                    self.member(item);
                }
                self.out.push(tag::END_SET);
                self.count(items.len());
            }
            Value::Date(ms) => {
                self.out.push(tag::DATE);
                self.double(*ms);
            }
            Value::RegExp { source, flags } => {
                self.out.push(tag::REGEXP);
                self.string(source);
                self.varint(flags.bits());
            }
            Value::ArrayBuffer(bytes) => {
                self.out.push(tag::ARRAY_BUFFER);
                self.bytes(bytes);
            }
            Value::View { kind, bytes } => {
                self.out.push(tag::HOST_OBJECT);
                if self.dialect == Dialect::ChildProcess {
                    self.varint(tag::HOST_VIEW);
                }
                self.varint(kind.index());
                self.bytes(bytes);
            }
            Value::Error(error) => {
                self.out.push(tag::ERROR);
                let prototype = match error.name {
                    ErrorName::Error => None,
                    ErrorName::EvalError => Some(tag::ERROR_EVAL),
                    ErrorName::RangeError => Some(tag::ERROR_RANGE),
                    ErrorName::ReferenceError => Some(tag::ERROR_REFERENCE),
                    ErrorName::SyntaxError => Some(tag::ERROR_SYNTAX),
                    ErrorName::TypeError => Some(tag::ERROR_TYPE),
                    ErrorName::UriError => Some(tag::ERROR_URI),
                };
                self.out.extend(prototype);
                if let Some(message) = &error.message {
                    self.out.push(tag::ERROR_MESSAGE);
                    self.string(message);
                }
                if let Some(cause) = &error.cause {
                    self.out.push(tag::ERROR_CAUSE);
                    self.member(cause);
                }
                if let Some(stack) = &error.stack {
                    self.out.push(tag::ERROR_STACK);
                    self.string(stack);
                }
                self.out.push(tag::ERROR_END);
            }
            Value::Wrapper(inner) => match &**inner {
                Value::Bool(true) => self.out.push(tag::TRUE_OBJECT),
                Value::Bool(false) => self.out.push(tag::FALSE_OBJECT),
                Value::Int(n) => {
                    self.out.push(tag::NUMBER_OBJECT);
                    self.double(f64::from(*n));
                }
                Value::Number(n) => {
                    self.out.push(tag::NUMBER_OBJECT);
                    self.double(*n);
                }
                Value::BigInt(n) => {
                    self.out.push(tag::BIGINT_OBJECT);
                    self.bigint(n);
                }
                Value::String(s) => {
                    self.out.push(tag::STRING_OBJECT);
                    self.string(s);
                }
                Value::Utf16(units) => {
                    self.out.push(tag::STRING_OBJECT);
                    self.utf16(units);
                }
                other => self.value(other),
            },
        }
    }
}

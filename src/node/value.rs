//! The JavaScript values that Node.js IPC messages carry, shared by the V8 ([`super::v8`]) and JSON
//! ([`super::json`]) codecs.
//!
//! A [`Value`] is a tree: it has no identity, so an object that a message references twice decodes as
//! two equal copies, and a cyclic message cannot be represented (the decoders reject it). Numbers keep
//! the distinction V8 makes on the wire (`Int` for a small integer, `Number` for any other double) so
//! that re-encoding reproduces the same bytes; JavaScript itself does not see it.
//!
//! Strings are UTF-8 [`String`]s. A JavaScript string is UTF-16 and may hold an unpaired surrogate,
//! which UTF-8 cannot: such a string is kept as its code units in [`Value::Utf16`] (or
//! [`Key::Utf16`]), so it still round-trips exactly. The decoders produce `Utf16` only for strings
//! that are not valid Unicode, so [`Value::as_str`] works on everything else.
//!
//! Building a message:
//!
//! ```ignore
//! let msg = Value::object([
//!     ("cmd", "NODE_HANDLE".into()),
//!     ("type", "net.Socket".into()),
//!     ("msg", Value::object([("type", "sticky:connection".into()), ("data", Value::buffer(head))])),
//! ]);
//! assert_eq!(msg.get("cmd").and_then(Value::as_str), Some("NODE_HANDLE"));
//! ```

use std::borrow::Cow;
use std::fmt;

/// A JavaScript value as carried by Node's IPC channel.
///
/// Equality is structural, with IEEE semantics for numbers (`NaN != NaN`), and `Int(1) != Number(1.0)`
/// although JavaScript cannot tell them apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `undefined` (V8 tag `_`).
    Undefined,
    /// `null` (V8 tag `0`).
    Null,
    /// `true` / `false` (V8 tags `T` / `F`).
    Bool(bool),
    /// A number that V8 wrote as a small integer (tag `I`, zigzag varint). JSON integers in `i32` range
    /// decode to this too.
    Int(i32),
    /// Any other number (tag `N`, 8-byte little-endian double; tag `U`, a uint32 varint, is read as this).
    Number(f64),
    /// A `bigint` (tag `Z`).
    BigInt(BigInt),
    /// A string that is valid Unicode (tags `"` Latin-1, `c` UTF-16LE, `S` UTF-8).
    String(String),
    /// A string with an unpaired surrogate, as UTF-16 code units (see the module docs).
    Utf16(Vec<u16>),
    /// A plain object (`o` … `{` count): its own enumerable properties in wire order. Keys are unique in
    /// anything JavaScript writes; if a hand-made one repeats a key, [`Value::get`] sees the last (as
    /// JavaScript assignment would), but V8 refuses to read such an object.
    Object(Vec<(Key, Value)>),
    /// A dense array (`A` length, elements, `$` 0 length). An element may be [`Value::Hole`].
    Array(Vec<Value>),
    /// A missing element of a dense array (tag `-`). Anywhere else it is written as `undefined`.
    Hole,
    /// An array in V8's sparse form (`a` length, key/value pairs, `@` count length): V8 writes every
    /// array with holes this way. Dense arrays that have extra non-index properties (`arr.foo = 1`) are
    /// decoded to this form too, with their elements as index entries, which JavaScript cannot tell
    /// apart. `length` may be far larger than the number of entries; the decoders make it cover every
    /// index key, as JavaScript does.
    SparseArray {
        /// The array's `length`.
        length: u32,
        /// Its own enumerable properties in wire order (index keys are [`Key::Int`] or [`Key::Number`]).
        entries: Vec<(Key, Value)>,
    },
    /// A `Map` (`;` key value … `:` 2×count), in insertion order.
    Map(Vec<(Value, Value)>),
    /// A `Set` (`'` value … `,` count), in insertion order.
    Set(Vec<Value>),
    /// A `Date` (tag `D`): milliseconds since the epoch, as written (JavaScript truncates it to an
    /// integer and turns anything beyond ±8.64e15 into an invalid date).
    Date(f64),
    /// A `RegExp` (tag `R`, source string, flags varint). A source with an unpaired surrogate is kept
    /// lossily (U+FFFD).
    RegExp {
        /// The pattern, as `RegExp.prototype.source` would give it.
        source: String,
        /// The flags.
        flags: RegExpFlags,
    },
    /// An `ArrayBuffer` (tag `B` byte-length bytes; a resizable one, tag `~`, is read as a plain one).
    ArrayBuffer(Vec<u8>),
    /// A `Buffer`, typed array or `DataView` (Node's host object, see [`ViewKind`]): only the viewed
    /// bytes travel, never the rest of the underlying `ArrayBuffer`. For typed arrays the byte length
    /// should be a multiple of [`ViewKind::element_size`], or Node refuses the message.
    View {
        /// Which constructor Node uses on the other side.
        kind: ViewKind,
        /// The raw bytes (host byte order, i.e. little-endian on every platform Node supports here).
        bytes: Vec<u8>,
    },
    /// An `Error` (tag `r`).
    Error(Box<JsError>),
    /// A primitive wrapper object: `new Boolean(b)` (`y`/`x`), `new Number(n)` (`n`), `Object(1n)` (`z`)
    /// or `new String(s)` (`s`). The box holds the primitive ([`Value::Bool`], [`Value::Int`] or
    /// [`Value::Number`], [`Value::BigInt`], [`Value::String`] or [`Value::Utf16`]); any other content
    /// is written as the plain value.
    Wrapper(Box<Value>),
}

/// A property key of an object or a sparse array.
///
/// V8 writes array-index keys as numbers and everything else as strings; JavaScript treats the number
/// `5` and the string `"5"` as the same key, and so do [`Key::matches`] and [`Value::get`].
#[derive(Debug, Clone, PartialEq)]
pub enum Key {
    /// A string key that is valid Unicode.
    String(String),
    /// A string key with an unpaired surrogate (see the module docs).
    Utf16(Vec<u16>),
    /// An integer key (tag `I`).
    Int(i32),
    /// Any other numeric key (tag `N`, or `U`), e.g. an array index above `i32::MAX`.
    Number(f64),
}

/// A `bigint` as V8 writes it: a sign and the magnitude's bytes, least significant first.
///
/// The bytes are kept as they came (V8 writes whole 64-bit digits), so decoding and re-encoding is
/// exact; [`BigInt::to_i128`] and [`BigInt::from_i128`] cover the common range.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BigInt {
    /// True for a negative value (never set for zero by V8).
    pub negative: bool,
    /// The magnitude, little-endian; trailing zero bytes are allowed.
    pub magnitude: Vec<u8>,
}

impl BigInt {
    /// The bigint of an `i128`, with the magnitude in whole 64-bit digits as V8 writes it.
    pub fn from_i128(n: i128) -> Self {
        let mut magnitude = n.unsigned_abs().to_le_bytes().to_vec();
        while magnitude.len() >= 8 && magnitude[magnitude.len() - 8..].iter().all(|&b| b == 0) {
            magnitude.truncate(magnitude.len() - 8);
        }
        BigInt { negative: n < 0, magnitude }
    }

    /// The value as an `i128`, or `None` if it does not fit.
    pub fn to_i128(&self) -> Option<i128> {
        let significant = self.magnitude.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        if significant > 16 {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..significant].copy_from_slice(&self.magnitude[..significant]);
        let magnitude = u128::from_le_bytes(bytes);
        if self.negative { 0i128.checked_sub_unsigned(magnitude) } else { i128::try_from(magnitude).ok() }
    }
}

/// Which `ArrayBufferView` a [`Value::View`] is: the type index that Node's `v8.DefaultSerializer`
/// writes in its host objects (`lib/v8.js`), 0 to 12.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ViewKind {
    /// `Int8Array` (0).
    Int8Array = 0,
    /// `Uint8Array` (1).
    Uint8Array = 1,
    /// `Uint8ClampedArray` (2).
    Uint8ClampedArray = 2,
    /// `Int16Array` (3).
    Int16Array = 3,
    /// `Uint16Array` (4).
    Uint16Array = 4,
    /// `Int32Array` (5).
    Int32Array = 5,
    /// `Uint32Array` (6).
    Uint32Array = 6,
    /// `Float32Array` (7).
    Float32Array = 7,
    /// `Float64Array` (8).
    Float64Array = 8,
    /// `DataView` (9).
    DataView = 9,
    /// Node's `Buffer` (10, `FastBuffer`).
    Buffer = 10,
    /// `BigInt64Array` (11).
    BigInt64Array = 11,
    /// `BigUint64Array` (12).
    BigUint64Array = 12,
}

impl ViewKind {
    const ALL: [ViewKind; 13] = [
        ViewKind::Int8Array,
        ViewKind::Uint8Array,
        ViewKind::Uint8ClampedArray,
        ViewKind::Int16Array,
        ViewKind::Uint16Array,
        ViewKind::Int32Array,
        ViewKind::Uint32Array,
        ViewKind::Float32Array,
        ViewKind::Float64Array,
        ViewKind::DataView,
        ViewKind::Buffer,
        ViewKind::BigInt64Array,
        ViewKind::BigUint64Array,
    ];

    /// Node's type index (the varint after the host-object tag).
    pub fn index(self) -> u32 {
        self as u32
    }

    /// The kind of a type index, if Node knows it.
    pub fn from_index(index: u32) -> Option<Self> {
        usize::try_from(index).ok().and_then(|i| Self::ALL.get(i).copied())
    }

    /// Bytes per element (1 for `Buffer` and `DataView`).
    pub fn element_size(self) -> usize {
        match self {
            ViewKind::Int8Array
            | ViewKind::Uint8Array
            | ViewKind::Uint8ClampedArray
            | ViewKind::DataView
            | ViewKind::Buffer => 1,
            ViewKind::Int16Array | ViewKind::Uint16Array => 2,
            ViewKind::Int32Array | ViewKind::Uint32Array | ViewKind::Float32Array => 4,
            ViewKind::Float64Array | ViewKind::BigInt64Array | ViewKind::BigUint64Array => 8,
        }
    }
}

/// The flags of a [`Value::RegExp`], as V8's bit set (g=1, i=2, m=4, y=8, u=16, s=32, l=64, d=128,
/// v=256).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct RegExpFlags(u32);

impl RegExpFlags {
    /// Flag letters in the order of `RegExp.prototype.flags`, with their bits.
    const LETTERS: [(char, u32); 9] =
        [('d', 128), ('g', 1), ('i', 2), ('l', 64), ('m', 4), ('s', 32), ('u', 16), ('v', 256), ('y', 8)];

    /// The flags of a V8 bit set, or `None` if it has bits V8 does not define.
    pub fn from_bits(bits: u32) -> Option<Self> {
        (bits < 512).then_some(RegExpFlags(bits))
    }

    /// V8's bit set.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Parses flag letters such as `"gi"`; `None` for an unknown or repeated letter.
    pub fn parse(letters: &str) -> Option<Self> {
        let mut bits = 0;
        for c in letters.chars() {
            let (_, bit) = Self::LETTERS.iter().find(|(l, _)| *l == c)?;
            if bits & bit != 0 {
                return None;
            }
            bits |= bit;
        }
        Some(RegExpFlags(bits))
    }
}

impl fmt::Display for RegExpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (letter, bit) in Self::LETTERS {
            if self.0 & bit != 0 {
                write!(f, "{letter}")?;
            }
        }
        Ok(())
    }
}

/// An `Error` object as V8 serializes it: the constructor (from `name`), `message`, `stack` and
/// `cause`. Other properties are not carried; a message or stack with an unpaired surrogate is kept
/// lossily.
#[derive(Debug, Clone, PartialEq)]
pub struct JsError {
    /// Which built-in constructor the receiver uses (custom names become `Error`).
    pub name: ErrorName,
    /// The `message` property, if it was an own data property.
    pub message: Option<String>,
    /// The `stack` property, if it was a string.
    pub stack: Option<String>,
    /// The `cause` property, if it was an own data property.
    pub cause: Option<Value>,
}

/// The built-in error constructors V8 distinguishes (the prototype sub-tag of an `r` value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ErrorName {
    /// `Error` (no sub-tag).
    #[default]
    Error,
    /// `EvalError` (`E`).
    EvalError,
    /// `RangeError` (`R`).
    RangeError,
    /// `ReferenceError` (`F`).
    ReferenceError,
    /// `SyntaxError` (`S`).
    SyntaxError,
    /// `TypeError` (`T`).
    TypeError,
    /// `URIError` (`U`).
    UriError,
}

impl ErrorName {
    /// The constructor's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::Error => "Error",
            ErrorName::EvalError => "EvalError",
            ErrorName::RangeError => "RangeError",
            ErrorName::ReferenceError => "ReferenceError",
            ErrorName::SyntaxError => "SyntaxError",
            ErrorName::TypeError => "TypeError",
            ErrorName::UriError => "URIError",
        }
    }
}

impl Value {
    /// A plain object from `(key, value)` pairs, in order: `Value::object([("cmd", "NODE_HANDLE".into())])`.
    pub fn object<K: Into<Key>>(entries: impl IntoIterator<Item = (K, Value)>) -> Value {
        Value::Object(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    /// A dense array.
    pub fn array(items: impl IntoIterator<Item = Value>) -> Value {
        Value::Array(items.into_iter().collect())
    }

    /// A Node `Buffer` holding `bytes`.
    pub fn buffer(bytes: impl Into<Vec<u8>>) -> Value {
        Value::View { kind: ViewKind::Buffer, bytes: bytes.into() }
    }

    /// A string from UTF-16 code units: [`Value::String`] if they are valid Unicode, else
    /// [`Value::Utf16`].
    pub fn from_utf16(units: &[u16]) -> Value {
        match String::from_utf16(units) {
            Ok(s) => Value::String(s),
            Err(_) => Value::Utf16(units.to_vec()),
        }
    }

    /// The property `key` of an object or sparse array (the last one if a key repeats), or the element
    /// at index `key` of a dense array (`None` for a hole). `None` for anything else.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Object(entries) | Value::SparseArray { entries, .. } => {
                entries.iter().rev().find(|(k, _)| k.matches(key)).map(|(_, v)| v)
            }
            Value::Array(items) => match items.get(usize::try_from(array_index(key)?).ok()?)? {
                Value::Hole => None,
                v => Some(v),
            },
            _ => None,
        }
    }

    /// Sets property `key` of an object (replacing the last entry with that key, else appending).
    /// Returns false, and does nothing, if `self` is not a [`Value::Object`].
    pub fn insert(&mut self, key: impl Into<Key>, value: Value) -> bool {
        let Value::Object(entries) = self else { return false };
        let key = key.into();
        match entries.iter_mut().rev().find(|(k, _)| k.same_property(&key)) {
            Some(entry) => entry.1 = value,
            None => entries.push((key, value)),
        }
        true
    }

    /// The string, if this is a [`Value::String`].
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// The number, if this is an [`Value::Int`] or a [`Value::Number`].
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(n) => Some(f64::from(n)),
            Value::Number(n) => Some(n),
            _ => None,
        }
    }

    /// The number, if it is an integer that an `f64` holds exactly (|n| ≤ 2^53).
    pub fn as_i64(&self) -> Option<i64> {
        const SAFE: f64 = 9_007_199_254_740_992.0;
        match *self {
            Value::Int(n) => Some(i64::from(n)),
            // The range check makes the cast exact.
            Value::Number(n) if n.fract() == 0.0 && n.abs() <= SAFE => Some(n as i64),
            _ => None,
        }
    }

    /// The boolean, if this is a [`Value::Bool`].
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Value::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The raw bytes of a `Buffer`, typed array, `DataView` or `ArrayBuffer`.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::View { bytes, .. } | Value::ArrayBuffer(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// The elements, if this is a dense [`Value::Array`].
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(items) => Some(items),
            _ => None,
        }
    }

    /// The properties, if this is a [`Value::Object`].
    pub fn as_object(&self) -> Option<&[(Key, Value)]> {
        match self {
            Value::Object(entries) => Some(entries),
            _ => None,
        }
    }

    /// True for `undefined` (and for a [`Value::Hole`], which reads as `undefined`).
    pub fn is_undefined(&self) -> bool {
        matches!(self, Value::Undefined | Value::Hole)
    }

    /// True for `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value at `path` below `self` (`["data", "workerId"]`), following [`Value::get`].
    pub fn pointer(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self, |v, key| v.get(key))
    }
}

impl Key {
    /// True if this key names the same property as the string `name` (`Int(5)` matches `"5"`).
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Key::String(s) => s == name,
            Key::Utf16(_) => false,
            Key::Int(n) => int_matches(i64::from(*n), name),
            Key::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => int_matches(*n as i64, name),
            Key::Number(n) => number_to_js_string(*n) == name,
        }
    }

    /// The array index this key names, if it names one (0 to 2^32 − 2).
    pub fn array_index(&self) -> Option<u32> {
        match self {
            Key::String(s) => array_index(s),
            Key::Utf16(_) => None,
            Key::Int(n) => u32::try_from(*n).ok(),
            // In range and integral, so the cast is exact.
            Key::Number(n) if n.fract() == 0.0 && (0.0..4_294_967_295.0).contains(n) => Some(*n as u32),
            Key::Number(_) => None,
        }
    }

    /// The key as JavaScript sees it, a string (lossy for [`Key::Utf16`]).
    pub fn to_js_string(&self) -> Cow<'_, str> {
        match self {
            Key::String(s) => Cow::Borrowed(s),
            Key::Utf16(units) => Cow::Owned(String::from_utf16_lossy(units)),
            Key::Int(n) => Cow::Owned(n.to_string()),
            Key::Number(n) => Cow::Owned(number_to_js_string(*n)),
        }
    }

    /// True if both keys name the same property.
    pub fn same_property(&self, other: &Key) -> bool {
        match (self, other) {
            (Key::Utf16(a), Key::Utf16(b)) => a == b,
            (Key::Utf16(_), _) | (_, Key::Utf16(_)) => false,
            (_, other) => self.matches(&other.to_js_string()),
        }
    }
}

/// True if the decimal form of `n` is `name`, without allocating.
fn int_matches(n: i64, name: &str) -> bool {
    let mut buf = [0u8; 24];
    let mut at = buf.len();
    let mut m = n.unsigned_abs();
    loop {
        at -= 1;
        // A single decimal digit always fits a byte.
        buf[at] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    if n < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    &buf[at..] == name.as_bytes()
}

/// The array index that the canonical decimal string `key` names (0 to 2^32 − 2), as JavaScript
/// decides which keys are indices.
pub fn array_index(key: &str) -> Option<u32> {
    let bytes = key.as_bytes();
    if bytes.is_empty() || bytes.len() > 10 || (bytes.len() > 1 && bytes[0] == b'0') {
        return None;
    }
    if !bytes.iter().all(u8::is_ascii_digit) {
        return None;
    }
    key.parse::<u32>().ok().filter(|&n| n != u32::MAX)
}

/// Formats a number as JavaScript's `Number.prototype.toString()` does (shortest round-trip digits;
/// exponent form below 1e-6 and from 1e21), as `JSON.stringify` and property keys need.
pub fn number_to_js_string(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    // `{:e}` gives the shortest digit count that round-trips; of the decimals with that many digits,
    // JavaScript takes the closest to x, ties to even, which is what formatting to that precision
    // gives (`{:e}` alone may pick the other one of a tie).
    let shortest = format!("{:e}", x.abs());
    let count = shortest.split_once('e').map_or(1, |(m, _)| m.chars().filter(char::is_ascii_digit).count());
    let sci = format!("{:.*e}", count.saturating_sub(1), x.abs());
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let k = digits.len() as i64;
    // The decimal point goes after `n` digits: x = 0.d1d2…dk × 10^n.
    let n = exponent.parse::<i64>().unwrap_or(0) + 1;
    let mut out = String::with_capacity(k.max(n).unsigned_abs() as usize + 8);
    if x < 0.0 {
        out.push('-');
    }
    if k <= n && n <= 21 {
        out.push_str(&digits);
        out.extend(std::iter::repeat_n('0', (n - k) as usize));
    } else if 0 < n && n <= 21 {
        out.push_str(&digits[..n as usize]);
        out.push('.');
        out.push_str(&digits[n as usize..]);
    } else if -6 < n && n <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', (-n) as usize));
        out.push_str(&digits);
    } else {
        out.push_str(&digits[..1]);
        if k > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if n > 0 { '+' } else { '-' });
        out.push_str(&(n - 1).abs().to_string());
    }
    out
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}

impl From<i32> for Value {
    fn from(n: i32) -> Value {
        Value::Int(n)
    }
}

impl From<u32> for Value {
    fn from(n: u32) -> Value {
        i32::try_from(n).map_or(Value::Number(f64::from(n)), Value::Int)
    }
}

/// `Int` if it fits, else the nearest `Number` (exact up to 2^53).
impl From<i64> for Value {
    fn from(n: i64) -> Value {
        i32::try_from(n).map_or(Value::Number(n as f64), Value::Int)
    }
}

/// `Int` if it fits, else the nearest `Number` (exact up to 2^53).
impl From<u64> for Value {
    fn from(n: u64) -> Value {
        i32::try_from(n).map_or(Value::Number(n as f64), Value::Int)
    }
}

/// `Int` if it fits, else the nearest `Number` (exact up to 2^53).
impl From<usize> for Value {
    fn from(n: usize) -> Value {
        i32::try_from(n).map_or(Value::Number(n as f64), Value::Int)
    }
}

impl From<f64> for Value {
    fn from(n: f64) -> Value {
        Value::Number(n)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::String(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::String(s)
    }
}

impl From<Vec<Value>> for Value {
    fn from(items: Vec<Value>) -> Value {
        Value::Array(items)
    }
}

impl From<BigInt> for Value {
    fn from(n: BigInt) -> Value {
        Value::BigInt(n)
    }
}

impl From<JsError> for Value {
    fn from(e: JsError) -> Value {
        Value::Error(Box::new(e))
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        Key::String(s.to_owned())
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        Key::String(s)
    }
}

impl From<i32> for Key {
    fn from(n: i32) -> Key {
        Key::Int(n)
    }
}

impl From<u32> for Key {
    fn from(n: u32) -> Key {
        i32::try_from(n).map_or(Key::Number(f64::from(n)), Key::Int)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_js_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn js_number_formatting_matches_number_to_string() {
        let cases: &[(f64, &str)] = &[
            (0.0, "0"),
            (-0.0, "0"),
            (1.0, "1"),
            (-1.5, "-1.5"),
            (0.1 + 0.2, "0.30000000000000004"),
            (2147483648.0, "2147483648"),
            (1e21, "1e+21"),
            (1e20, "100000000000000000000"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e-6, "0.000001"),
            (1e-7, "1e-7"),
            (1.5e-7, "1.5e-7"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::from(f32::from_bits(0x3f8c_cccd)), "1.100000023841858"),
            // Two shortest candidates, equally close: the even one.
            (784_961_713_276_403.0 + 0.25, "784961713276403.2"),
        ];
        for &(x, want) in cases {
            assert_eq!(number_to_js_string(x), want, "{x:e}");
        }
    }

    #[test]
    fn keys_match_like_javascript_properties() {
        assert!(Key::Int(5).matches("5"));
        assert!(Key::Int(-5).matches("-5"));
        assert!(!Key::Int(5).matches("05"));
        assert!(Key::Number(3_000_000_000.0).matches("3000000000"));
        assert!(Key::Number(1.5).matches("1.5"));
        assert!(Key::Number(-0.0).matches("0"));
        assert!(Key::Int(i32::MIN).matches("-2147483648"));
        assert!(!Key::Utf16(vec![0xd800]).matches("\u{fffd}"));
        assert!(Key::from("7").same_property(&Key::Int(7)));
        assert_eq!(array_index("4294967294"), Some(4_294_967_294));
        assert_eq!(Key::Number(4_294_967_294.0).array_index(), Some(4_294_967_294));
        assert_eq!(Key::Number(4_294_967_295.0).array_index(), None);
        assert_eq!(Key::Int(-1).array_index(), None);
        assert_eq!(Key::from("12").array_index(), Some(12));
        assert_eq!(array_index("4294967295"), None);
        assert_eq!(array_index("01"), None);
        assert_eq!(array_index(""), None);
    }

    #[test]
    fn accessors_and_builders() {
        let mut msg = Value::object([
            ("cmd", "NODE_HANDLE".into()),
            ("n", 7.into()),
            ("data", Value::object([("workerId", 3.into())])),
            ("buf", Value::buffer(*b"ab")),
            ("list", Value::Array(vec![1.into(), Value::Hole])),
        ]);
        assert_eq!(msg.get("cmd").and_then(Value::as_str), Some("NODE_HANDLE"));
        assert_eq!(msg.get("n").and_then(Value::as_i64), Some(7));
        assert_eq!(msg.pointer(&["data", "workerId"]).and_then(Value::as_f64), Some(3.0));
        assert_eq!(msg.get("buf").and_then(Value::as_bytes), Some(&b"ab"[..]));
        assert_eq!(msg.pointer(&["list", "0"]), Some(&Value::Int(1)));
        assert_eq!(msg.pointer(&["list", "1"]), None);
        assert!(msg.insert("n", 8.into()));
        assert!(msg.insert("seq", 0.into()));
        assert_eq!(msg.get("n"), Some(&Value::Int(8)));
        assert_eq!(msg.as_object().map(<[_]>::len), Some(6));
        assert_eq!(msg.get("list").and_then(Value::as_array).map(<[_]>::len), Some(2));
        assert_eq!(Value::Bool(true).as_bool(), Some(true));
        assert!(Value::Hole.is_undefined() && Value::Null.is_null() && !Value::Null.is_undefined());
        assert_eq!(ErrorName::UriError.as_str(), "URIError");
        assert_eq!(Value::from(3_000_000_000u32), Value::Number(3e9));
        assert_eq!(Value::from_utf16(&[0x61, 0xd800]), Value::Utf16(vec![0x61, 0xd800]));
        assert_eq!(Value::from_utf16(&[0xd83d, 0xde00]), Value::String("😀".into()));
    }

    #[test]
    fn bigint_i128_round_trip() {
        for n in [0i128, 1, -1, 255, 1 << 64, -(1 << 100), i128::MAX, i128::MIN] {
            let b = BigInt::from_i128(n);
            assert_eq!(b.magnitude.len() % 8, 0);
            assert_eq!(b.to_i128(), Some(n), "{n}");
        }
        assert_eq!(BigInt { negative: false, magnitude: vec![1; 17] }.to_i128(), None);
    }

    #[test]
    fn regexp_flags() {
        let flags = RegExpFlags::parse("ygimsud").map(|f| f.bits());
        assert_eq!(flags, Some(0xbf));
        assert_eq!(RegExpFlags::from_bits(0xbf).map(|f| f.to_string()).as_deref(), Some("dgimsuy"));
        assert_eq!(RegExpFlags::parse("gg"), None);
        assert_eq!(RegExpFlags::from_bits(512), None);
    }
}

//! V8's ValueSerializer wire format, as Node.js's `serialization: "advanced"` IPC channel uses it.
//!
//! # The format
//!
//! A payload is a header, `FF` then the format version as a varint, followed by exactly one value
//! (bytes after it are ignored, as V8 does). Node 20 and 22 write version 15, Node 16 writes 13 or 14.
//! Versions 13 to 15 differ only where V8's own view form gained flags (14) and shared objects got a
//! tag (15); V8 reads every older version, so [`serialize`] writes 13, which Node 20 was verified to
//! accept. [`deserialize`] reads 13 and anything later (an unknown tag still fails). V8's fallback for
//! version-13 data with view flags (a V8 bug, crbug.com/1284506) is not emulated.
//!
//! A value is a one-byte tag and its data. A varint is unsigned LEB128 (V8 reads at most 5 bytes for a
//! 32-bit one and drops excess bits); a zigzag varint maps 0, −1, 1, −2… to 0, 1, 2, 3…; a double is
//! 8 bytes in host order (little-endian on every platform Node runs on here). A `00` byte is padding
//! wherever a tag may stand (V8 pads so that two-byte string data is 2-aligned).
//!
//! | tag | value | data |
//! |---|---|---|
//! | `_` `0` `T` `F` | undefined, null, true, false | |
//! | `I` / `U` / `N` | number | zigzag varint / varint / double |
//! | `Z` | bigint | varint bitfield (bit 0 sign, bits 1.. byte length), digit bytes |
//! | `"` / `c` / `S` | string | varint byte length; Latin-1 / UTF-16LE / UTF-8 (read only) |
//! | `o` … `{` | object | key, value pairs (keys: strings or `I`/`N`/`U` numbers); `{` varint count |
//! | `A` … `$` | dense array | varint length, that many values (`-` a hole), key/value pairs; `$` count length |
//! | `a` … `@` | sparse array | varint length, key/value pairs; `@` count length |
//! | `D` | Date | double |
//! | `y` `x` `n` `z` `s` | Boolean, Number, BigInt, String object | —, double, bigint data, string value |
//! | `R` | RegExp | source (a string value), varint flags |
//! | `;` … `:` | Map | key, value, …; `:` varint 2×count |
//! | `'` … `,` | Set | values; `,` varint count |
//! | `B` / `~` | ArrayBuffer / resizable | varint length (/ varint max length), bytes |
//! | `V` | view on the ArrayBuffer just read | sub-tag, offset, length, flags (from version 14) |
//! | `r` | Error | sub-tags: `E` `R` `F` `S` `T` `U` prototype, `m` message, `c` cause, `s` stack, `.` end |
//! | `\` | host object | Node's: see below |
//! | `^` | back-reference | varint object id |
//! | `?` | ignored count | varint, then the value |
//!
//! Node writes `Buffer`s, typed arrays and `DataView`s as host objects: `v8.serialize` as `\`, the
//! type index ([`ViewKind`](crate::node::value::ViewKind)), the byte length and the bytes; the
//! child-process channel (`ChildProcessSerializer`) puts a varint `0` before the type index, and for
//! any other host object a `1` followed by a plain copy of it. [`Dialect`] selects between the two;
//! the IPC one is the default.
//!
//! # Object ids
//!
//! Every object, in the order its tag is read, takes the next id, which a later `^` names: plain
//! objects, both array forms, Dates, wrapper objects, RegExps, Maps, Sets, ArrayBuffers, views (after
//! their buffer; V8's own `V` form gives the buffer an id and then the view one), Errors and host
//! objects (a child-process `1` host object takes one id for itself and its copy takes the next).
//! Primitives, strings included, never take one. A `^` that names an object still being read is a cycle:
//! [`Value`] is a tree, so that is an error, and every other reference is resolved by decoding the named
//! object again. The total output is bounded (see [`deserialize`]), so a reference bomb fails early.
//!
//! # Relaying
//!
//! [`select`] and [`top_level_fields`] read a few fields of a message without decoding the rest: other
//! values are walked (their object ids still counted, nothing copied), so a relay can route a frame by
//! its `type` and `uid` and forward the original bytes.

mod read;
mod write;

#[cfg(test)]
mod tests;

use crate::node::value::Value;

/// The format version [`serialize`] writes (`FF 0D`).
pub const VERSION: u32 = 13;

/// The oldest version [`deserialize`] reads; older ones encode strings and host objects differently.
pub const MIN_VERSION: u32 = 13;

/// How deeply values may nest: the top value is at depth 1, and every value inside another (a
/// property, element, Map or Set member, error cause, or the copy a back-reference makes) one deeper.
/// Deeper payloads are refused rather than risk the stack.
pub const MAX_DEPTH: usize = 256;

/// Which host-object encoding a payload uses for `Buffer`s and typed arrays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Dialect {
    /// Node's child-process channel (`internal/child_process/serialization.js`): the host object data
    /// starts with varint `0` for a view, `1` for another host object (followed by a plain value).
    #[default]
    ChildProcess,
    /// `v8.serialize` / `v8.deserialize`: the host object data is the view directly.
    Plain,
}

/// Why a payload could not be decoded, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid V8 payload at byte {offset}: {kind}")]
pub struct Error {
    /// Offset in the payload (after any frame header) where decoding stopped.
    pub offset: usize,
    /// What was wrong.
    pub kind: ErrorKind,
}

/// The kinds of [`Error`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The payload ended inside a value (or a length points past its end).
    #[error("truncated")]
    Truncated,
    /// The payload does not start with `FF` and a version.
    #[error("no version header")]
    NoHeader,
    /// The header names a version older than [`MIN_VERSION`].
    #[error("unsupported format version {0}")]
    Version(u32),
    /// A tag that this decoder does not know.
    #[error("unknown tag {0:#04x}")]
    UnknownTag(u8),
    /// A value that cannot travel over a pipe (transferred or shared memory, WebAssembly).
    #[error("unsupported value: {0}")]
    Unsupported(&'static str),
    /// A value whose data is inconsistent (counts, lengths, sub-tags).
    #[error("{0}")]
    Invalid(&'static str),
    /// A `^` naming an id that no object has.
    #[error("back-reference to unknown object {0}")]
    BadReference(u32),
    /// A `^` naming an object that contains it.
    #[error("cyclic reference to object {0}")]
    Cycle(u32),
    /// Nesting beyond [`MAX_DEPTH`].
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// The decoded value would be far larger than the payload (back-references), see [`deserialize`].
    #[error("decoded value too large for its payload")]
    TooLarge,
}

/// The tags of the format (`SerializationTag` in V8's `value-serializer.cc`).
mod tag {
    pub const PADDING: u8 = 0x00;
    pub const VERSION: u8 = 0xFF;
    pub const VERIFY_OBJECT_COUNT: u8 = b'?';
    pub const HOLE: u8 = b'-';
    pub const UNDEFINED: u8 = b'_';
    pub const NULL: u8 = b'0';
    pub const TRUE: u8 = b'T';
    pub const FALSE: u8 = b'F';
    pub const INT32: u8 = b'I';
    pub const UINT32: u8 = b'U';
    pub const DOUBLE: u8 = b'N';
    pub const BIGINT: u8 = b'Z';
    pub const UTF8_STRING: u8 = b'S';
    pub const ONE_BYTE_STRING: u8 = b'"';
    pub const TWO_BYTE_STRING: u8 = b'c';
    pub const OBJECT_REFERENCE: u8 = b'^';
    pub const BEGIN_OBJECT: u8 = b'o';
    pub const END_OBJECT: u8 = b'{';
    pub const BEGIN_SPARSE_ARRAY: u8 = b'a';
    pub const END_SPARSE_ARRAY: u8 = b'@';
    pub const BEGIN_DENSE_ARRAY: u8 = b'A';
    pub const END_DENSE_ARRAY: u8 = b'$';
    pub const DATE: u8 = b'D';
    pub const TRUE_OBJECT: u8 = b'y';
    pub const FALSE_OBJECT: u8 = b'x';
    pub const NUMBER_OBJECT: u8 = b'n';
    pub const BIGINT_OBJECT: u8 = b'z';
    pub const STRING_OBJECT: u8 = b's';
    pub const REGEXP: u8 = b'R';
    pub const BEGIN_MAP: u8 = b';';
    pub const END_MAP: u8 = b':';
    pub const BEGIN_SET: u8 = b'\'';
    pub const END_SET: u8 = b',';
    pub const ARRAY_BUFFER: u8 = b'B';
    pub const RESIZABLE_ARRAY_BUFFER: u8 = b'~';
    pub const ARRAY_BUFFER_TRANSFER: u8 = b't';
    pub const ARRAY_BUFFER_VIEW: u8 = b'V';
    pub const SHARED_ARRAY_BUFFER: u8 = b'u';
    pub const SHARED_OBJECT: u8 = b'p';
    pub const WASM_MODULE_TRANSFER: u8 = b'w';
    pub const WASM_MEMORY_TRANSFER: u8 = b'm';
    pub const HOST_OBJECT: u8 = b'\\';
    pub const ERROR: u8 = b'r';

    /// Error sub-tags.
    pub const ERROR_EVAL: u8 = b'E';
    pub const ERROR_RANGE: u8 = b'R';
    pub const ERROR_REFERENCE: u8 = b'F';
    pub const ERROR_SYNTAX: u8 = b'S';
    pub const ERROR_TYPE: u8 = b'T';
    pub const ERROR_URI: u8 = b'U';
    pub const ERROR_MESSAGE: u8 = b'm';
    pub const ERROR_CAUSE: u8 = b'c';
    pub const ERROR_STACK: u8 = b's';
    pub const ERROR_END: u8 = b'.';

    /// The child-process channel's host-object prefixes.
    pub const HOST_VIEW: u32 = 0;
    pub const HOST_OTHER: u32 = 1;
}

/// Serializes `value` as Node's child-process channel does (header `FF 0D`, [`Dialect::ChildProcess`]).
///
/// Every `Value` can be written: a [`Value::Hole`] outside a dense array is written as `undefined`,
/// shared sub-values are written out each time (a `Value` has no identity to refer back to). The writer
/// recurses, so a hand-built value nested far deeper than [`MAX_DEPTH`] can exhaust the stack; decoded
/// values never are. Lengths of 4 GiB and more, which the format cannot express, are truncated.
pub fn serialize(value: &Value) -> Vec<u8> {
    serialize_with(value, Dialect::ChildProcess)
}

/// [`serialize`] in the given dialect.
pub fn serialize_with(value: &Value, dialect: Dialect) -> Vec<u8> {
    let mut out = Vec::new();
    serialize_into(value, dialect, &mut out);
    out
}

/// Appends the serialization of `value` to `out` (alignment padding is relative to where it starts).
pub fn serialize_into(value: &Value, dialect: Dialect, out: &mut Vec<u8>) {
    write::Writer::new(out, dialect).payload(value);
}

/// Decodes a payload written by Node's child-process channel ([`Dialect::ChildProcess`]).
///
/// Fails cleanly on anything malformed, on cycles, on nesting deeper than [`MAX_DEPTH`], and when the
/// decoded value would need more than roughly `64 × bytes.len() + 1 MiB` of memory, which only
/// back-references can cause. Every length is checked against the remaining input before anything is
/// allocated.
pub fn deserialize(bytes: &[u8]) -> Result<Value, Error> {
    deserialize_with(bytes, Dialect::ChildProcess)
}

/// [`deserialize`] in the given dialect.
pub fn deserialize_with(bytes: &[u8], dialect: Dialect) -> Result<Value, Error> {
    read::Reader::new(bytes, dialect)?.value()
}

/// Reads only the values at `paths` in a child-process payload, e.g.
/// `select(payload, &[&["type"], &["uid"], &["data", "workerId"]])`.
///
/// Each path is a list of property names from the top-level value. The result is what
/// `deserialize(bytes)?.pointer(path).cloned()` gives (the last of repeated keys wins, numeric keys
/// match their decimal names), without decoding the rest: plain objects along a path are walked, the
/// values at the paths are decoded, and everything else is skipped: no string or buffer is copied,
/// only a small record per object is kept, so that a wanted value that refers back into a skipped one
/// is still resolved. An empty path decodes the whole value.
pub fn select<const N: usize>(bytes: &[u8], paths: &[&[&str]; N]) -> Result<[Option<Value>; N], Error> {
    let mut reader = read::Reader::new(bytes, Dialect::ChildProcess)?;
    let wanted: Vec<(usize, &[&str])> = paths.iter().copied().enumerate().collect();
    let mut out = std::array::from_fn(|_| None);
    reader.select(&wanted, &mut out)?;
    Ok(out)
}

/// [`select`] of top-level properties: `top_level_fields(payload, &["source", "type", "uid"])`.
pub fn top_level_fields<const N: usize>(bytes: &[u8], keys: &[&str; N]) -> Result<[Option<Value>; N], Error> {
    let paths: [&[&str]; N] = std::array::from_fn(|i| std::slice::from_ref(&keys[i]));
    select(bytes, &paths)
}

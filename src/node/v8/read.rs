//! The decoder: one pass that either builds values or only walks them (skipping), counting object ids
//! the same way in both so that back-references resolve wherever they point.

use super::{Dialect, Error, ErrorKind, MAX_DEPTH, MIN_VERSION, tag};
use crate::node::value::{BigInt, ErrorName, JsError, Key, RegExpFlags, Value, ViewKind};

type Result<T> = std::result::Result<T, Error>;

/// What a decoded value costs against the budget, beside its payload bytes: roughly the size of a
/// `Value` (or of a key), so that the budget approximates the memory of the output.
const NODE_COST: usize = 32;
/// The budget is `BUDGET_PER_BYTE × input + BUDGET_BASE`. Without back-references a value never needs
/// more than about 33 × its encoding, so only reference amplification can exhaust it.
const BUDGET_PER_BYTE: usize = 64;
const BUDGET_BASE: usize = 1 << 20;
/// Elements reserved up front for a dense array at most (it grows as elements are really read).
const MAX_RESERVE: usize = 1024;

/// Where an object's encoding starts, whether it has been read completely, and what a `V` after it
/// needs to know.
#[derive(Clone, Copy)]
struct Object {
    start: usize,
    closed: bool,
    kind: ObjectKind,
}

#[derive(Clone, Copy)]
enum ObjectKind {
    Other,
    /// An ArrayBuffer of that many bytes: a `V` may follow it.
    Buffer {
        len: usize,
    },
    /// A V8-native view (`V`) over the buffer with that id; `start` is just after the `V`.
    View {
        buffer: usize,
    },
}

/// A string as it lies in the input.
#[derive(Clone, Copy)]
enum RawStr<'a> {
    Latin1(&'a [u8]),
    Utf16Le(&'a [u8]),
    Utf8(&'a [u8]),
}

impl RawStr<'_> {
    fn units(bytes: &[u8]) -> impl Iterator<Item = u16> + '_ {
        bytes.chunks_exact(2).map(|p| u16::from_le_bytes([p[0], p[1]]))
    }

    /// [`Value::String`], or [`Value::Utf16`] for an unpaired surrogate.
    fn to_value(self) -> Value {
        match self {
            RawStr::Latin1(b) => Value::String(match std::str::from_utf8(b) {
                // ASCII reads the same in Latin-1 and UTF-8: one copy, not a char at a time.
                Ok(ascii) if b.is_ascii() => ascii.to_owned(),
                _ => b.iter().map(|&c| char::from(c)).collect(),
            }),
            RawStr::Utf16Le(b) => {
                let units: Vec<u16> = Self::units(b).collect();
                Value::from_utf16(&units)
            }
            RawStr::Utf8(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
        }
    }

    fn to_key(self) -> Key {
        match self.to_value() {
            Value::Utf16(units) => Key::Utf16(units),
            Value::String(s) => Key::String(s),
            _ => Key::String(String::new()),
        }
    }

    /// The string, with U+FFFD for unpaired surrogates.
    fn to_lossy(self) -> String {
        match self {
            RawStr::Utf16Le(b) => char::decode_utf16(Self::units(b)).map(|c| c.unwrap_or('\u{fffd}')).collect(),
            other => match other.to_value() {
                Value::String(s) => s,
                _ => String::new(),
            },
        }
    }

    /// True if it equals `name`, without allocating (except for invalid UTF-8).
    fn matches(self, name: &str) -> bool {
        match self {
            RawStr::Latin1(b) if b.is_ascii() => b == name.as_bytes(),
            RawStr::Latin1(b) => b.len() <= name.len() && b.iter().map(|&c| char::from(c)).eq(name.chars()),
            RawStr::Utf16Le(b) => Self::units(b).eq(name.encode_utf16()),
            RawStr::Utf8(b) => String::from_utf8_lossy(b) == name,
        }
    }
}

/// A property key as it lies in the input.
enum RawKey<'a> {
    Str(RawStr<'a>),
    Num(Key),
}

impl RawKey<'_> {
    fn matches(&self, name: &str) -> bool {
        match self {
            RawKey::Str(s) => s.matches(name),
            RawKey::Num(k) => k.matches(name),
        }
    }

    fn into_key(self) -> Key {
        match self {
            RawKey::Str(s) => s.to_key(),
            RawKey::Num(k) => k,
        }
    }
}

pub(super) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    version: u32,
    dialect: Dialect,
    /// Every object read so far, by id.
    objects: Vec<Object>,
    depth: usize,
    /// What may still be built (see [`NODE_COST`]).
    budget: usize,
    /// Walking only: nothing is built or charged, ids are still counted.
    skipping: bool,
    /// Inside the re-decoding of a referenced object: ids were counted the first time.
    replaying: usize,
}

impl<'a> Reader<'a> {
    /// A reader positioned after the header.
    pub(super) fn new(buf: &'a [u8], dialect: Dialect) -> Result<Self> {
        let budget = buf.len().saturating_mul(BUDGET_PER_BYTE).saturating_add(BUDGET_BASE);
        let mut reader = Reader {
            buf,
            pos: 0,
            version: 0,
            dialect,
            objects: Vec::new(),
            depth: 0,
            budget,
            skipping: false,
            replaying: 0,
        };
        if reader.byte()? != tag::VERSION {
            return Err(Error { offset: 0, kind: ErrorKind::NoHeader });
        }
        reader.version = reader.varint()?;
        if reader.version < MIN_VERSION {
            return Err(reader.fail(ErrorKind::Version(reader.version)));
        }
        Ok(reader)
    }

    fn fail(&self, kind: ErrorKind) -> Error {
        Error { offset: self.pos, kind }
    }

    fn invalid(&self, what: &'static str) -> Error {
        self.fail(ErrorKind::Invalid(what))
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.fail(ErrorKind::Truncated))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, len: usize) -> Result<&'a [u8]> {
        if len > self.buf.len() - self.pos {
            return Err(self.fail(ErrorKind::Truncated));
        }
        let bytes = &self.buf[self.pos..self.pos + len];
        self.pos += len;
        Ok(bytes)
    }

    /// A 32-bit varint as V8 reads it: at most 5 bytes, bits beyond 32 dropped.
    fn varint(&mut self) -> Result<u32> {
        let mut value = 0u32;
        for shift in (0..35).step_by(7) {
            let b = self.byte()?;
            value |= u32::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
            if b & 0x80 == 0 {
                break;
            }
        }
        Ok(value)
    }

    fn length(&mut self) -> Result<usize> {
        // u32 always fits usize on the platforms clusterd supports.
        Ok(self.varint()? as usize)
    }

    fn zigzag(&mut self) -> Result<i32> {
        let n = self.varint()?;
        Ok(((n >> 1) as i32) ^ -((n & 1) as i32))
    }

    fn double(&mut self) -> Result<f64> {
        let bytes = self.take(8)?;
        let mut raw = [0u8; 8];
        raw.copy_from_slice(bytes);
        let n = f64::from_le_bytes(raw);
        // V8 canonicalizes NaN.
        Ok(if n.is_nan() { f64::NAN } else { n })
    }

    /// The next tag, after padding and ignored object counts.
    fn tag(&mut self) -> Result<u8> {
        loop {
            match self.byte()? {
                tag::PADDING => {}
                tag::VERIFY_OBJECT_COUNT => {
                    self.varint()?;
                }
                t => return Ok(t),
            }
        }
    }

    /// The next tag after padding, without consuming anything.
    fn peek_tag(&self) -> Option<u8> {
        self.buf[self.pos..].iter().copied().find(|&b| b != tag::PADDING)
    }

    fn building(&self) -> bool {
        !self.skipping
    }

    fn charge(&mut self, cost: usize) -> Result<()> {
        if self.skipping {
            return Ok(());
        }
        self.budget = self.budget.checked_sub(cost).ok_or_else(|| self.fail(ErrorKind::TooLarge))?;
        Ok(())
    }

    fn enter(&mut self) -> Result<()> {
        if self.depth >= MAX_DEPTH {
            return Err(self.fail(ErrorKind::TooDeep));
        }
        self.depth += 1;
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Takes the next object id (none when replaying: the first pass took it).
    fn open(&mut self, start: usize, kind: ObjectKind) -> Option<usize> {
        if self.replaying > 0 {
            return None;
        }
        self.objects.push(Object { start, closed: false, kind });
        Some(self.objects.len() - 1)
    }

    fn close(&mut self, id: Option<usize>) {
        if let Some(object) = id.and_then(|id| self.objects.get_mut(id)) {
            object.closed = true;
        }
    }

    /// Reads one value (and a `V` view after an ArrayBuffer).
    pub(super) fn value(&mut self) -> Result<Value> {
        self.enter()?;
        self.charge(NODE_COST)?;
        let (mut value, buffer) = self.value_inner()?;
        if let Some(buffer) = buffer
            && self.peek_tag() == Some(tag::ARRAY_BUFFER_VIEW)
        {
            self.tag()?;
            value = self.native_view(buffer, value)?;
        }
        self.leave();
        Ok(value)
    }

    /// One value; also the id of the ArrayBuffer it is, if it is one.
    ///
    /// The readers of nested values are called through a function pointer so that this frame, which
    /// every nesting level adds to the stack, stays small even in debug builds.
    fn value_inner(&mut self) -> Result<(Value, Option<usize>)> {
        let t = self.tag()?;
        let start = self.pos - 1;
        let read: fn(&mut Self, u8, usize) -> Result<Value> = match t {
            tag::OBJECT_REFERENCE => return self.reference(),
            tag::BEGIN_OBJECT => Self::object,
            tag::BEGIN_DENSE_ARRAY => Self::dense_array,
            tag::BEGIN_SPARSE_ARRAY => Self::sparse_array,
            tag::BEGIN_MAP => Self::map,
            tag::BEGIN_SET => Self::set,
            tag::ERROR => Self::error,
            tag::HOST_OBJECT => Self::host_object,
            tag::ARRAY_BUFFER | tag::RESIZABLE_ARRAY_BUFFER => Self::array_buffer,
            _ => Self::leaf,
        };
        let value = read(self, t, start)?;
        let buffer = match t {
            tag::ARRAY_BUFFER | tag::RESIZABLE_ARRAY_BUFFER => self.id_at(start),
            _ => None,
        };
        Ok((value, buffer))
    }

    /// Values that hold no other values.
    fn leaf(&mut self, t: u8, start: usize) -> Result<Value> {
        Ok(match t {
            tag::UNDEFINED => Value::Undefined,
            tag::NULL => Value::Null,
            tag::TRUE => Value::Bool(true),
            tag::FALSE => Value::Bool(false),
            tag::INT32 => Value::Int(self.zigzag()?),
            tag::UINT32 => Value::Number(f64::from(self.varint()?)),
            tag::DOUBLE => Value::Number(self.double()?),
            tag::BIGINT => self.bigint().map(Value::BigInt)?,
            tag::ONE_BYTE_STRING | tag::TWO_BYTE_STRING | tag::UTF8_STRING => {
                let s = self.raw_string(t)?;
                self.build_string(s)?
            }
            tag::DATE => {
                let ms = self.double()?;
                let id = self.open(start, ObjectKind::Other);
                self.close(id);
                Value::Date(ms)
            }
            tag::TRUE_OBJECT | tag::FALSE_OBJECT | tag::NUMBER_OBJECT | tag::BIGINT_OBJECT | tag::STRING_OBJECT => {
                let id = self.open(start, ObjectKind::Other);
                let inner = match t {
                    tag::TRUE_OBJECT => Value::Bool(true),
                    tag::FALSE_OBJECT => Value::Bool(false),
                    tag::NUMBER_OBJECT => Value::Number(self.double()?),
                    tag::BIGINT_OBJECT => Value::BigInt(self.bigint()?),
                    _ => {
                        let s = self.string_value()?;
                        self.build_string(s)?
                    }
                };
                self.close(id);
                if !self.building() {
                    return Ok(Value::Undefined);
                }
                Value::Wrapper(Box::new(inner))
            }
            tag::REGEXP => {
                let id = self.open(start, ObjectKind::Other);
                let source = self.string_value()?;
                let bits = self.varint()?;
                let flags = RegExpFlags::from_bits(bits).ok_or_else(|| self.invalid("unknown RegExp flags"))?;
                self.close(id);
                let source = if self.building() { self.charge_bytes(source)?.to_lossy() } else { String::new() };
                Value::RegExp { source, flags }
            }
            tag::ARRAY_BUFFER_TRANSFER | tag::SHARED_ARRAY_BUFFER => {
                return Err(self.fail(ErrorKind::Unsupported("transferred or shared ArrayBuffer")));
            }
            tag::WASM_MODULE_TRANSFER | tag::WASM_MEMORY_TRANSFER => {
                return Err(self.fail(ErrorKind::Unsupported("WebAssembly object")));
            }
            tag::SHARED_OBJECT if self.version >= 15 => {
                return Err(self.fail(ErrorKind::Unsupported("shared object")));
            }
            other => {
                self.pos = start;
                return Err(self.fail(ErrorKind::UnknownTag(other)));
            }
        })
    }

    fn object(&mut self, _: u8, start: usize) -> Result<Value> {
        let id = self.open(start, ObjectKind::Other);
        let (entries, count) = self.properties(tag::END_OBJECT)?;
        if self.varint()? != count {
            return Err(self.invalid("object property count mismatch"));
        }
        self.close(id);
        Ok(Value::Object(entries))
    }

    fn sparse_array(&mut self, _: u8, start: usize) -> Result<Value> {
        let length = self.varint()?;
        let id = self.open(start, ObjectKind::Other);
        let (entries, count) = self.properties(tag::END_SPARSE_ARRAY)?;
        if self.varint()? != count || self.varint()? != length {
            return Err(self.invalid("sparse array count or length mismatch"));
        }
        self.close(id);
        Ok(sparse_array(length, entries))
    }

    fn array_buffer(&mut self, t: u8, start: usize) -> Result<Value> {
        let len = self.length()?;
        if t == tag::RESIZABLE_ARRAY_BUFFER && self.length()? < len {
            return Err(self.invalid("resizable ArrayBuffer longer than its maximum"));
        }
        let bytes = self.take(len)?;
        let id = self.open(start, ObjectKind::Buffer { len });
        self.close(id);
        self.build_bytes(bytes).map(Value::ArrayBuffer)
    }

    /// The id of the object whose encoding starts at `start` (ids are taken in input order).
    fn id_at(&self, start: usize) -> Option<usize> {
        self.objects.binary_search_by_key(&start, |o| o.start).ok()
    }

    fn bigint(&mut self) -> Result<BigInt> {
        let bitfield = self.varint()?;
        // Bit 0 is the sign, the next 30 bits the byte length.
        let len = ((bitfield >> 1) & ((1 << 30) - 1)) as usize;
        let digits = self.take(len)?;
        let magnitude = self.build_bytes(digits)?;
        Ok(BigInt { negative: bitfield & 1 == 1, magnitude })
    }

    fn raw_string(&mut self, t: u8) -> Result<RawStr<'a>> {
        let len = self.length()?;
        if t == tag::TWO_BYTE_STRING && len % 2 != 0 {
            return Err(self.invalid("odd two-byte string length"));
        }
        let bytes = self.take(len)?;
        Ok(match t {
            tag::ONE_BYTE_STRING => RawStr::Latin1(bytes),
            tag::TWO_BYTE_STRING => RawStr::Utf16Le(bytes),
            _ => RawStr::Utf8(bytes),
        })
    }

    /// A value that must be a string (V8's `ReadString`: RegExp sources, String objects, error texts).
    fn string_value(&mut self) -> Result<RawStr<'a>> {
        match self.tag()? {
            t @ (tag::ONE_BYTE_STRING | tag::TWO_BYTE_STRING | tag::UTF8_STRING) => self.raw_string(t),
            _ => Err(self.invalid("expected a string")),
        }
    }

    fn charge_bytes(&mut self, s: RawStr<'a>) -> Result<RawStr<'a>> {
        let (RawStr::Latin1(b) | RawStr::Utf16Le(b) | RawStr::Utf8(b)) = s;
        self.charge(b.len())?;
        Ok(s)
    }

    fn build_string(&mut self, s: RawStr<'a>) -> Result<Value> {
        if !self.building() {
            return Ok(Value::Undefined);
        }
        Ok(self.charge_bytes(s)?.to_value())
    }

    fn build_bytes(&mut self, bytes: &[u8]) -> Result<Vec<u8>> {
        if !self.building() {
            return Ok(Vec::new());
        }
        self.charge(bytes.len())?;
        Ok(bytes.to_vec())
    }

    fn key(&mut self) -> Result<RawKey<'a>> {
        Ok(match self.tag()? {
            t @ (tag::ONE_BYTE_STRING | tag::TWO_BYTE_STRING | tag::UTF8_STRING) => RawKey::Str(self.raw_string(t)?),
            tag::INT32 => RawKey::Num(Key::Int(self.zigzag()?)),
            tag::UINT32 => RawKey::Num(Key::from(self.varint()?)),
            tag::DOUBLE => RawKey::Num(Key::Number(self.double()?)),
            _ => return Err(self.invalid("property key is not a string or number")),
        })
    }

    /// Key/value pairs up to `end`; also how many there were.
    fn properties(&mut self, end: u8) -> Result<(Vec<(Key, Value)>, u32)> {
        let mut entries = Vec::new();
        let mut count = 0u32;
        loop {
            if self.peek_tag() == Some(end) {
                self.tag()?;
                return Ok((entries, count));
            }
            let key = self.key()?;
            if let RawKey::Str(s) = key {
                self.charge_bytes(s)?;
            }
            self.charge(NODE_COST)?;
            let value = self.value()?;
            count = count.wrapping_add(1);
            if self.building() {
                entries.push((key.into_key(), value));
            }
        }
    }

    fn dense_array(&mut self, _: u8, start: usize) -> Result<Value> {
        let length = self.varint()?;
        // Every element takes at least a byte, as V8 also checks.
        if length as usize > self.buf.len() - self.pos {
            return Err(self.invalid("array longer than the payload"));
        }
        let id = self.open(start, ObjectKind::Other);
        let mut items = Vec::new();
        if self.building() {
            items.reserve((length as usize).min(MAX_RESERVE));
        }
        for _ in 0..length {
            let item = if self.peek_tag() == Some(tag::HOLE) {
                self.tag()?;
                self.charge(NODE_COST)?;
                Value::Hole
            } else {
                self.value()?
            };
            if self.building() {
                items.push(item);
            }
        }
        let (props, count) = self.properties(tag::END_DENSE_ARRAY)?;
        if self.varint()? != count || self.varint()? != length {
            return Err(self.invalid("dense array count or length mismatch"));
        }
        self.close(id);
        if props.is_empty() {
            return Ok(Value::Array(items));
        }
        // Extra properties: the general form, which JavaScript cannot tell apart.
        let mut entries: Vec<(Key, Value)> =
            (0u32..).zip(items).filter(|(_, v)| !matches!(v, Value::Hole)).map(|(i, v)| (Key::from(i), v)).collect();
        entries.extend(props);
        Ok(sparse_array(length, entries))
    }

    fn map(&mut self, _: u8, start: usize) -> Result<Value> {
        let id = self.open(start, ObjectKind::Other);
        let mut entries = Vec::new();
        let mut count = 0u32;
        while self.peek_tag() != Some(tag::END_MAP) {
            let key = self.value()?;
            let value = self.value()?;
            count = count.wrapping_add(2);
            if self.building() {
                entries.push((key, value));
            }
        }
        self.tag()?;
        if self.varint()? != count {
            return Err(self.invalid("Map length mismatch"));
        }
        self.close(id);
        Ok(Value::Map(entries))
    }

    fn set(&mut self, _: u8, start: usize) -> Result<Value> {
        let id = self.open(start, ObjectKind::Other);
        let mut items = Vec::new();
        let mut count = 0u32;
        while self.peek_tag() != Some(tag::END_SET) {
            let item = self.value()?;
            count = count.wrapping_add(1);
            if self.building() {
                items.push(item);
            }
        }
        self.tag()?;
        if self.varint()? != count {
            return Err(self.invalid("Set length mismatch"));
        }
        self.close(id);
        Ok(Value::Set(items))
    }

    fn error(&mut self, _: u8, start: usize) -> Result<Value> {
        let id = self.open(start, ObjectKind::Other);
        let mut error = JsError { name: ErrorName::Error, message: None, stack: None, cause: None };
        loop {
            let sub = u8::try_from(self.varint()?).map_err(|_| self.invalid("unknown Error sub-tag"))?;
            match sub {
                tag::ERROR_EVAL => error.name = ErrorName::EvalError,
                tag::ERROR_RANGE => error.name = ErrorName::RangeError,
                tag::ERROR_REFERENCE => error.name = ErrorName::ReferenceError,
                tag::ERROR_SYNTAX => error.name = ErrorName::SyntaxError,
                tag::ERROR_TYPE => error.name = ErrorName::TypeError,
                tag::ERROR_URI => error.name = ErrorName::UriError,
                tag::ERROR_MESSAGE | tag::ERROR_STACK => {
                    let s = self.string_value()?;
                    let s = if self.building() { Some(self.charge_bytes(s)?.to_lossy()) } else { None };
                    if sub == tag::ERROR_MESSAGE {
                        error.message = s;
                    } else {
                        error.stack = s;
                    }
                }
                tag::ERROR_CAUSE => error.cause = Some(self.value()?),
                tag::ERROR_END => break,
                _ => return Err(self.invalid("unknown Error sub-tag")),
            }
        }
        self.close(id);
        if !self.building() {
            return Ok(Value::Undefined);
        }
        Ok(Value::Error(Box::new(error)))
    }

    fn host_object(&mut self, _: u8, start: usize) -> Result<Value> {
        let id = self.open(start, ObjectKind::Other);
        let value = match self.dialect {
            Dialect::Plain => self.host_view()?,
            Dialect::ChildProcess => match self.varint()? {
                tag::HOST_VIEW => self.host_view()?,
                // Node sends a plain copy of other host objects, and uses that copy.
                tag::HOST_OTHER => self.value()?,
                _ => return Err(self.invalid("unknown host object kind")),
            },
        };
        self.close(id);
        Ok(value)
    }

    /// Node's view data: type index, byte length, bytes.
    fn host_view(&mut self) -> Result<Value> {
        let index = self.varint()?;
        let kind = ViewKind::from_index(index).ok_or_else(|| self.invalid("unknown ArrayBufferView type"))?;
        let len = self.length()?;
        let bytes = self.take(len)?;
        Ok(Value::View { kind, bytes: self.build_bytes(bytes)? })
    }

    /// V8's own view form: `V` after an ArrayBuffer (the one with id `buffer`, decoded as `data`).
    fn native_view(&mut self, buffer: usize, data: Value) -> Result<Value> {
        let start = self.pos;
        let sub = self.varint()?;
        let offset = self.length()?;
        let len = self.length()?;
        let buffer_len = match self.objects.get(buffer).map(|o| o.kind) {
            Some(ObjectKind::Buffer { len }) => len,
            _ => return Err(self.invalid("view without an ArrayBuffer")),
        };
        if offset > buffer_len || len > buffer_len - offset {
            return Err(self.invalid("view outside its ArrayBuffer"));
        }
        if self.version >= 14 {
            // Resizability flags; resizable buffers are read as plain ones.
            self.varint()?;
        }
        let kind = match u8::try_from(sub).unwrap_or(0) {
            b'b' => ViewKind::Int8Array,
            b'B' => ViewKind::Uint8Array,
            b'C' => ViewKind::Uint8ClampedArray,
            b'w' => ViewKind::Int16Array,
            b'W' => ViewKind::Uint16Array,
            b'd' => ViewKind::Int32Array,
            b'D' => ViewKind::Uint32Array,
            b'f' => ViewKind::Float32Array,
            b'F' => ViewKind::Float64Array,
            b'q' => ViewKind::BigInt64Array,
            b'Q' => ViewKind::BigUint64Array,
            b'?' => ViewKind::DataView,
            _ => return Err(self.invalid("unknown ArrayBufferView sub-tag")),
        };
        let size = kind.element_size();
        if offset % size != 0 || len % size != 0 {
            return Err(self.invalid("misaligned typed array"));
        }
        let id = self.open(start, ObjectKind::View { buffer });
        self.close(id);
        let bytes = match &data {
            Value::ArrayBuffer(all) if self.building() => all.get(offset..offset + len).unwrap_or_default(),
            _ => &[],
        };
        let bytes = self.build_bytes(bytes)?;
        Ok(Value::View { kind, bytes })
    }

    /// `^`: the referenced object, decoded again from where it starts.
    fn reference(&mut self) -> Result<(Value, Option<usize>)> {
        let raw = self.varint()?;
        let id = raw as usize;
        let object = *self.objects.get(id).ok_or_else(|| self.fail(ErrorKind::BadReference(raw)))?;
        if !object.closed {
            return Err(self.fail(ErrorKind::Cycle(raw)));
        }
        let buffer = matches!(object.kind, ObjectKind::Buffer { .. }).then_some(id);
        if !self.building() {
            return Ok((Value::Undefined, buffer));
        }
        Ok((self.replay(id)?, buffer))
    }

    fn replay(&mut self, id: usize) -> Result<Value> {
        let Some(object) = self.objects.get(id).copied() else {
            return Err(self.invalid("back-reference to unknown object"));
        };
        let resume = self.pos;
        self.replaying += 1;
        self.pos = object.start;
        let result = match object.kind {
            ObjectKind::View { buffer } => self.replay(buffer).and_then(|data| {
                self.pos = object.start;
                self.native_view(buffer, data)
            }),
            _ => self.value_inner().map(|(v, _)| v),
        };
        self.replaying -= 1;
        // Re-reading costs time even where it builds little (padding, sub-tags): charge what it read.
        let reread = self.pos.saturating_sub(object.start);
        self.pos = resume;
        let value = result?;
        self.charge(reread)?;
        Ok(value)
    }

    /// Fills `out[i]` with the value at `path` for each `(i, path)` in `paths`, reading the value at
    /// the current position: a plain object is walked (only the wanted properties are decoded), any
    /// other value, or one wanted whole, is decoded and looked into.
    pub(super) fn select(&mut self, paths: &[(usize, &[&str])], out: &mut [Option<Value>]) -> Result<()> {
        if self.peek_tag() != Some(tag::BEGIN_OBJECT) || paths.iter().any(|(_, path)| path.is_empty()) {
            let skipping = std::mem::replace(&mut self.skipping, false);
            let value = self.value();
            self.skipping = skipping;
            let value = value?;
            for &(i, path) in paths {
                if let Some(slot) = out.get_mut(i) {
                    *slot = value.pointer(path).cloned();
                }
            }
            return Ok(());
        }
        self.enter()?;
        self.tag()?;
        let id = self.open(self.pos - 1, ObjectKind::Other);
        let mut count = 0u32;
        loop {
            if self.peek_tag() == Some(tag::END_OBJECT) {
                self.tag()?;
                break;
            }
            let key = self.key()?;
            let wanted: Vec<(usize, &[&str])> = paths
                .iter()
                .filter_map(|&(i, path)| match path.split_first() {
                    Some((first, rest)) if key.matches(first) => Some((i, rest)),
                    _ => None,
                })
                .collect();
            if wanted.is_empty() {
                let skipping = std::mem::replace(&mut self.skipping, true);
                let skipped = self.value();
                self.skipping = skipping;
                skipped?;
            } else {
                // A repeated key replaces what an earlier one gave.
                for &(i, _) in &wanted {
                    if let Some(slot) = out.get_mut(i) {
                        *slot = None;
                    }
                }
                self.select(&wanted, out)?;
            }
            count = count.wrapping_add(1);
        }
        if self.varint()? != count {
            return Err(self.invalid("object property count mismatch"));
        }
        self.close(id);
        self.leave();
        Ok(())
    }
}

/// An array in its general form. An index property at or beyond the stated length lengthens the array
/// in JavaScript, which V8 allows while reading; the length says so here too.
fn sparse_array(length: u32, entries: Vec<(Key, Value)>) -> Value {
    let length = entries.iter().filter_map(|(key, _)| key.array_index()).map(|i| i + 1).fold(length, u32::max);
    Value::SparseArray { length, entries }
}

//! A pickle reader for the subset that `torch.save` writes for a state dict: dicts, lists,
//! tuples, numbers, strings, `collections.OrderedDict`, tensor rebuilds and storage references.
//!
//! Nothing is ever executed: `GLOBAL` names are matched against a fixed allow-list and anything
//! else (`os.system`, `builtins.eval`, any class) refuses the whole file. Every read is bounds
//! checked; a short file is a `weights_corrupt` error, never a panic.
use std::collections::HashMap;

use tch::Kind;

use crate::error::{Error, ErrorCode, Result};

/// The callables a state-dict pickle may name.
#[derive(Debug, Clone, PartialEq)]
pub enum Global {
    OrderedDict,
    RebuildTensorV2,
    RebuildParameter,
    /// `torch.FloatStorage` and friends: the element type of a storage.
    StorageType(Kind),
}

/// Where a tensor's data is and how to view it.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub storage: String,
    pub kind: Kind,
    pub offset: i64,
    pub size: Vec<i64>,
    pub stride: Vec<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Global(Global),
    /// A persistent storage reference: element kind, key, number of elements when stated.
    Storage {
        kind: Kind,
        key: String,
    },
    Tensor(TensorSpec),
    Mark,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::WeightsCorrupt, msg)
}

fn unsafe_pickle(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::WeightsUnsafe, msg)
}

/// Resolves `module.name` against the allow-list.
fn allowed_global(module: &str, name: &str) -> Result<Global> {
    let kind = |k| Ok(Global::StorageType(k));
    match (module, name) {
        ("collections", "OrderedDict") => Ok(Global::OrderedDict),
        ("torch._utils", "_rebuild_tensor_v2") => Ok(Global::RebuildTensorV2),
        ("torch._utils", "_rebuild_parameter") => Ok(Global::RebuildParameter),
        ("torch", "FloatStorage") => kind(Kind::Float),
        ("torch", "DoubleStorage") => kind(Kind::Double),
        ("torch", "HalfStorage") => kind(Kind::Half),
        ("torch", "BFloat16Storage") => kind(Kind::BFloat16),
        ("torch", "LongStorage") => kind(Kind::Int64),
        ("torch", "IntStorage") => kind(Kind::Int),
        ("torch", "ShortStorage") => kind(Kind::Int16),
        ("torch", "CharStorage") => kind(Kind::Int8),
        ("torch", "ByteStorage") => kind(Kind::Uint8),
        ("torch", "BoolStorage") => kind(Kind::Bool),
        _ => Err(unsafe_pickle(format!(
            "the pickle refers to {module}.{name}, which is neither a tensor nor a dict; only state dicts \
             (tensors in dicts) are accepted, and nothing in the file was executed"
        ))),
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(|| {
            corrupt(format!("the file ends early: {n} bytes wanted at byte {} of {}", self.pos, self.data.len()))
        })?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or_else(|| corrupt("unterminated GLOBAL name"))?;
        let s = std::str::from_utf8(&rest[..end]).map_err(|_| corrupt("GLOBAL name is not UTF-8"))?;
        self.pos += end + 1;
        Ok(s)
    }
    fn string(&mut self, n: usize) -> Result<String> {
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| corrupt("a pickled string is not UTF-8"))
    }
}

/// Deepest nesting of containers a pickle may build (a state dict's is about 5).
pub const MAX_DEPTH: u32 = 64;
/// Most values a pickle may build, counting every copy a memo read makes: a few bytes of memo
/// reads that double a list each time would otherwise build billions. A state dict of the
/// largest catalog model builds about 20,000.
pub const MAX_VALUES: u64 = 2_000_000;

/// A value on the unpickler's stack, with how deep it nests and how many values it holds.
#[derive(Clone)]
struct Item {
    v: Value,
    depth: u32,
    values: u64,
}

impl Item {
    fn leaf(v: Value) -> Self {
        Item { v, depth: 1, values: 1 }
    }

    /// A container of `items`, checked against `MAX_DEPTH`.
    fn of(items: Vec<Item>, make: impl FnOnce(Vec<Value>) -> Result<Value>) -> Result<Self> {
        let depth = 1 + items.iter().map(|i| i.depth).max().unwrap_or(0);
        let values = 1 + items.iter().map(|i| i.values).sum::<u64>();
        if depth > MAX_DEPTH {
            return Err(corrupt(format!("the pickle nests containers deeper than {MAX_DEPTH}")));
        }
        Ok(Item { v: make(items.into_iter().map(|i| i.v).collect())?, depth, values })
    }

    /// Adds `child` to this container's counts, checked against `MAX_DEPTH`.
    fn holds(&mut self, child: &Item) -> Result<()> {
        self.depth = self.depth.max(child.depth + 1);
        self.values += child.values;
        if self.depth > MAX_DEPTH {
            return Err(corrupt(format!("the pickle nests containers deeper than {MAX_DEPTH}")));
        }
        Ok(())
    }
}

/// Reads one pickle from `data` starting at `*pos`; advances `*pos` past its STOP. What it may
/// build is bounded before it is built: nesting (`MAX_DEPTH`) and values, memo copies included
/// (`MAX_VALUES`).
///
/// Long on purpose: one `match` over the opcodes of the subset, each arm a few lines, reads as
/// the protocol's table; split, the stack and memo would be passed through a dozen helpers.
pub fn load(data: &[u8], pos: &mut usize) -> Result<Value> {
    let mut r = Reader { data, pos: *pos };
    let mut stack: Vec<Item> = Vec::new();
    let mut memo: HashMap<u32, Item> = HashMap::new();
    let mut built: u64 = 0;
    let pop = |stack: &mut Vec<Item>| stack.pop().ok_or_else(|| corrupt("pickle stack underflow"));
    let pop_mark = |stack: &mut Vec<Item>| -> Result<Vec<Item>> {
        let at =
            stack.iter().rposition(|i| matches!(i.v, Value::Mark)).ok_or_else(|| corrupt("pickle MARK missing"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    let memo_put = |memo: &mut HashMap<u32, Item>, k: u32, top: Option<&Item>| -> Result<()> {
        if memo.len() as u64 >= MAX_VALUES && !memo.contains_key(&k) {
            return Err(corrupt(format!("the pickle memoizes more than {MAX_VALUES} values")));
        }
        memo.insert(k, top.cloned().ok_or_else(|| corrupt("BINPUT on an empty stack"))?);
        Ok(())
    };
    loop {
        let op = r.u8()?;
        built += 1;
        if built > MAX_VALUES {
            return Err(corrupt(format!("the pickle builds more than {MAX_VALUES} values")));
        }
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return Err(corrupt(format!("unsupported pickle protocol {proto}")));
                }
            }
            0x95 => {
                r.u64()?; // FRAME length: a hint only
            }
            b'.' => {
                *pos = r.pos;
                return pop(&mut stack).map(|i| i.v);
            }
            b'(' => stack.push(Item::leaf(Value::Mark)),
            b'N' => stack.push(Item::leaf(Value::None)),
            0x88 => stack.push(Item::leaf(Value::Bool(true))),
            0x89 => stack.push(Item::leaf(Value::Bool(false))),
            b'}' => stack.push(Item::leaf(Value::Dict(Vec::new()))),
            b']' => stack.push(Item::leaf(Value::List(Vec::new()))),
            b')' => stack.push(Item::leaf(Value::Tuple(Vec::new()))),
            b'K' => stack.push(Item::leaf(Value::Int(r.u8()? as i128))),
            b'M' => stack.push(Item::leaf(Value::Int(r.u16()? as i128))),
            b'J' => stack.push(Item::leaf(Value::Int(r.u32()? as i32 as i128))),
            0x8a => {
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 16 {
                    return Err(corrupt(format!("a {n}-byte integer is too large")));
                }
                let mut buf = [if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 }; 16];
                buf[..n].copy_from_slice(bytes);
                stack.push(Item::leaf(Value::Int(i128::from_le_bytes(buf))));
            }
            b'G' => stack.push(Item::leaf(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes"))))),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Item::leaf(Value::Str(r.string(n)?)));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Item::leaf(Value::Str(r.string(n)?)));
            }
            0x8d => {
                let n = usize::try_from(r.u64()?).map_err(|_| corrupt("string length overflows"))?;
                stack.push(Item::leaf(Value::Str(r.string(n)?)));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Item::leaf(Value::Bytes(r.take(n)?.to_vec())));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Item::leaf(Value::Bytes(r.take(n)?.to_vec())));
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo_put(&mut memo, k, stack.last())?;
            }
            b'r' => {
                let k = r.u32()?;
                memo_put(&mut memo, k, stack.last())?;
            }
            0x94 => {
                let k = memo.len() as u32;
                memo_put(&mut memo, k, stack.last())?;
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                let item = memo.get(&k).ok_or_else(|| corrupt(format!("memo entry {k} is missing")))?;
                // A memo read copies the value: counted before the copy is made.
                built = built.saturating_add(item.values);
                if built > MAX_VALUES {
                    return Err(corrupt(format!("the pickle builds more than {MAX_VALUES} values")));
                }
                stack.push(item.clone());
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Item::leaf(Value::Global(allowed_global(module, name)?)));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module.v, name.v) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Item::leaf(Value::Global(allowed_global(&m, &n)?))),
                    _ => return Err(corrupt("STACK_GLOBAL needs two strings")),
                }
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::of(items, |v| Ok(Value::Tuple(v)))?);
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(corrupt("pickle stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Item::of(items, |v| Ok(Value::Tuple(v)))?);
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::of(items, |v| Ok(Value::List(v)))?);
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Item::of(items, |v| Ok(Value::Dict(pairs(v)?)))?);
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(top @ Item { v: Value::List(_), .. }) => {
                        top.holds(&v)?;
                        if let Value::List(l) = &mut top.v {
                            l.push(v.v);
                        }
                    }
                    _ => return Err(corrupt("APPEND to something that is not a list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(top @ Item { v: Value::List(_), .. }) => {
                        for i in &items {
                            top.holds(i)?;
                        }
                        if let Value::List(l) = &mut top.v {
                            l.extend(items.into_iter().map(|i| i.v));
                        }
                    }
                    _ => return Err(corrupt("APPENDS to something that is not a list")),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(top @ Item { v: Value::Dict(_), .. }) => {
                        top.holds(&k)?;
                        top.holds(&v)?;
                        if let Value::Dict(d) = &mut top.v {
                            d.push((k.v, v.v));
                        }
                    }
                    _ => return Err(corrupt("SETITEM on something that is not a dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(top @ Item { v: Value::Dict(_), .. }) => {
                        for i in &items {
                            top.holds(i)?;
                        }
                        let new = pairs(items.into_iter().map(|i| i.v).collect())?;
                        if let Value::Dict(d) = &mut top.v {
                            d.extend(new);
                        }
                    }
                    _ => return Err(corrupt("SETITEMS on something that is not a dict")),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let Item { v: args, depth, values } = args;
                let args = match args {
                    Value::Tuple(a) => a,
                    _ => return Err(corrupt("REDUCE arguments are not a tuple")),
                };
                stack.push(Item { v: reduce(callable.v, args)?, depth, values });
            }
            b'b' => {
                // BUILD sets attributes (an OrderedDict's `_metadata`): state only, ignored.
                pop(&mut stack)?;
                if stack.is_empty() {
                    return Err(corrupt("BUILD on an empty stack"));
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Item::leaf(persistent_load(pid.v)?));
            }
            other => {
                return Err(unsafe_pickle(format!(
                    "pickle opcode 0x{other:02x} at byte {} is outside the state-dict subset petal reads",
                    r.pos - 1
                )))
            }
        }
    }
}

fn pairs(items: Vec<Value>) -> Result<Vec<(Value, Value)>> {
    if items.len() % 2 != 0 {
        return Err(corrupt("odd number of dict items"));
    }
    let mut out = Vec::with_capacity(items.len() / 2);
    let mut it = items.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.push((k, v));
    }
    Ok(out)
}

fn int(v: &Value, what: &str) -> Result<i64> {
    match v {
        Value::Int(i) => i64::try_from(*i).map_err(|_| corrupt(format!("{what} is out of range"))),
        _ => Err(corrupt(format!("{what} is not an integer"))),
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>> {
    match v {
        Value::Tuple(items) | Value::List(items) => items.iter().map(|i| int(i, what)).collect(),
        _ => Err(corrupt(format!("{what} is not a tuple"))),
    }
}

fn reduce(callable: Value, args: Vec<Value>) -> Result<Value> {
    match callable {
        Value::Global(Global::OrderedDict) => Ok(Value::Dict(Vec::new())),
        Value::Global(Global::RebuildTensorV2) => {
            if args.len() < 4 {
                return Err(corrupt("_rebuild_tensor_v2 needs at least 4 arguments"));
            }
            let (kind, storage) = match &args[0] {
                Value::Storage { kind, key } => (*kind, key.clone()),
                _ => return Err(corrupt("_rebuild_tensor_v2's first argument is not a storage")),
            };
            Ok(Value::Tensor(TensorSpec {
                storage,
                kind,
                offset: int(&args[1], "storage offset")?,
                size: ints(&args[2], "tensor size")?,
                stride: ints(&args[3], "tensor stride")?,
            }))
        }
        Value::Global(Global::RebuildParameter) => {
            args.into_iter().next().ok_or_else(|| corrupt("_rebuild_parameter without a tensor"))
        }
        Value::Global(Global::StorageType(_)) => Err(unsafe_pickle("a storage type is called directly")),
        _ => Err(unsafe_pickle("the pickle calls something that is not an allowed constructor")),
    }
}

/// `('storage', storage_type, key, location, numel[, view_metadata])` → a storage reference.
fn persistent_load(pid: Value) -> Result<Value> {
    let items = match pid {
        Value::Tuple(items) => items,
        _ => return Err(corrupt("persistent id is not a tuple")),
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(Global::StorageType(kind)), key, ..] if tag == "storage" => {
            let key = match key {
                Value::Str(s) => s.clone(),
                Value::Int(i) => i.to_string(),
                _ => return Err(corrupt("storage key is neither a string nor an integer")),
            };
            Ok(Value::Storage { kind: *kind, key })
        }
        _ => Err(unsafe_pickle("persistent id is not a torch storage reference")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_all(data: &[u8]) -> Result<Value> {
        let mut pos = 0;
        load(data, &mut pos)
    }

    #[test]
    fn refuses_a_function_call_before_running_anything() {
        // cos\nsystem\n(S'echo pwned'\ntR.  — the classic payload.
        let payload = b"cos\nsystem\n(S'echo pwned'\ntR.";
        let e = load_all(payload).unwrap_err();
        assert_eq!(e.code, ErrorCode::WeightsUnsafe);
        assert!(e.message.contains("os.system"), "{}", e.message);
        // STACK_GLOBAL form, protocol 4.
        let payload = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x061+1\x85R.";
        let e = load_all(payload).unwrap_err();
        assert!(e.message.contains("builtins.eval"), "{}", e.message);
    }

    #[test]
    fn short_input_is_corrupt_not_a_panic() {
        let e = load_all(b"\x80\x02}q\x00(X\x10\x00\x00\x00abc").unwrap_err();
        assert_eq!(e.code, ErrorCode::WeightsCorrupt);
        for cut in 0..16 {
            let data = b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05u.";
            let r = load_all(&data[..cut]);
            assert!(r.is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn memo_copies_and_nesting_are_bounded() {
        // A list, then 40 rounds of "a new list holding the previous one twice (two memo
        // reads)": 2^40 values from about 400 bytes.
        let mut p = b"\x80\x02]q\x00".to_vec();
        for i in 0..40u8 {
            p.extend_from_slice(&[b'(', b'h', i, b'h', i, b'l', b'q', i + 1]);
        }
        p.push(b'.');
        let start = std::time::Instant::now();
        let e = load_all(&p).unwrap_err();
        assert_eq!(e.code, ErrorCode::WeightsCorrupt);
        assert!(e.message.contains("more than"), "{}", e.message);
        assert!(start.elapsed() < std::time::Duration::from_secs(10));
        // 100,000 nested lists (two bytes each): refused at depth 64, no stack overflow.
        let mut p = b"\x80\x02".to_vec();
        for _ in 0..100_000 {
            p.extend_from_slice(b"]");
        }
        for _ in 0..100_000 {
            p.extend_from_slice(b"a");
        }
        p.push(b'.');
        let e = load_all(&p).unwrap_err();
        assert!(e.message.contains("deeper than 64"), "{}", e.message);
    }

    #[test]
    fn reads_dicts_numbers_and_big_ints() {
        let v = load_all(b"\x80\x02}q\x00(X\x01\x00\x00\x00aK\x05X\x01\x00\x00\x00bJ\xff\xff\xff\xffu.").unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![(Value::Str("a".into()), Value::Int(5)), (Value::Str("b".into()), Value::Int(-1))])
        );
        // torch's legacy magic number, a 10-byte LONG1.
        let v = load_all(b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19.").unwrap();
        assert_eq!(v, Value::Int(0x1950a86a20f9469cfc6c));
    }
}

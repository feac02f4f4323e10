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

/// Reads one pickle from `data` starting at `*pos`; advances `*pos` past its STOP.
pub fn load(data: &[u8], pos: &mut usize) -> Result<Value> {
    let mut r = Reader { data, pos: *pos };
    let mut stack: Vec<Value> = Vec::new();
    let mut memo: HashMap<u32, Value> = HashMap::new();
    let pop = |stack: &mut Vec<Value>| stack.pop().ok_or_else(|| corrupt("pickle stack underflow"));
    let pop_mark = |stack: &mut Vec<Value>| -> Result<Vec<Value>> {
        let at = stack.iter().rposition(|v| matches!(v, Value::Mark)).ok_or_else(|| corrupt("pickle MARK missing"))?;
        let items = stack.split_off(at + 1);
        stack.pop();
        Ok(items)
    };
    loop {
        let op = r.u8()?;
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
                return pop(&mut stack);
            }
            b'(' => stack.push(Value::Mark),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b')' => stack.push(Value::Tuple(Vec::new())),
            b'K' => stack.push(Value::Int(r.u8()? as i128)),
            b'M' => stack.push(Value::Int(r.u16()? as i128)),
            b'J' => stack.push(Value::Int(r.u32()? as i32 as i128)),
            0x8a => {
                let n = r.u8()? as usize;
                let bytes = r.take(n)?;
                if n > 16 {
                    return Err(corrupt(format!("a {n}-byte integer is too large")));
                }
                let mut buf = [if bytes.last().is_some_and(|b| b & 0x80 != 0) { 0xff } else { 0 }; 16];
                buf[..n].copy_from_slice(bytes);
                stack.push(Value::Int(i128::from_le_bytes(buf)));
            }
            b'G' => stack.push(Value::Float(f64::from_be_bytes(r.take(8)?.try_into().expect("8 bytes")))),
            b'X' => {
                let n = r.u32()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.string(n)?));
            }
            0x8d => {
                let n = usize::try_from(r.u64()?).map_err(|_| corrupt("string length overflows"))?;
                stack.push(Value::Str(r.string(n)?));
            }
            b'B' => {
                let n = r.u32()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'C' => {
                let n = r.u8()? as usize;
                stack.push(Value::Bytes(r.take(n)?.to_vec()));
            }
            b'q' => {
                let k = r.u8()? as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| corrupt("BINPUT on an empty stack"))?);
            }
            b'r' => {
                let k = r.u32()?;
                memo.insert(k, stack.last().cloned().ok_or_else(|| corrupt("BINPUT on an empty stack"))?);
            }
            0x94 => {
                let k = memo.len() as u32;
                memo.insert(k, stack.last().cloned().ok_or_else(|| corrupt("MEMOIZE on an empty stack"))?);
            }
            b'h' | b'j' => {
                let k = if op == b'h' { r.u8()? as u32 } else { r.u32()? };
                stack.push(memo.get(&k).cloned().ok_or_else(|| corrupt(format!("memo entry {k} is missing")))?);
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(allowed_global(module, name)?));
            }
            0x93 => {
                let name = pop(&mut stack)?;
                let module = pop(&mut stack)?;
                match (module, name) {
                    (Value::Str(m), Value::Str(n)) => stack.push(Value::Global(allowed_global(&m, &n)?)),
                    _ => return Err(corrupt("STACK_GLOBAL needs two strings")),
                }
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err(corrupt("pickle stack underflow"));
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::List(items));
            }
            b'd' => {
                let items = pop_mark(&mut stack)?;
                stack.push(Value::Dict(pairs(items)?));
            }
            b'a' => {
                let v = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.push(v),
                    _ => return Err(corrupt("APPEND to something that is not a list")),
                }
            }
            b'e' => {
                let items = pop_mark(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(corrupt("APPENDS to something that is not a list")),
                }
            }
            b's' => {
                let v = pop(&mut stack)?;
                let k = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.push((k, v)),
                    _ => return Err(corrupt("SETITEM on something that is not a dict")),
                }
            }
            b'u' => {
                let items = pop_mark(&mut stack)?;
                let new = pairs(items)?;
                match stack.last_mut() {
                    Some(Value::Dict(d)) => d.extend(new),
                    _ => return Err(corrupt("SETITEMS on something that is not a dict")),
                }
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let callable = pop(&mut stack)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    _ => return Err(corrupt("REDUCE arguments are not a tuple")),
                };
                stack.push(reduce(callable, args)?);
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
                stack.push(persistent_load(pid)?);
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

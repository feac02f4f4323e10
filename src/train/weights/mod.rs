//! Weight files from Rust, no Python at run time: torchvision `.pth` in the zip format
//! (`torch.save`'s default) and the legacy non-zip format, and `.safetensors`.
//! Only state dicts are read (see `pickle.rs`); anything else is refused.
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use tch::{Kind, Tensor};

use crate::error::{Error, ErrorCode, Result};

pub mod pickle;
pub mod store;

use pickle::{TensorSpec, Value};

/// The formats petal reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TorchZip,
    TorchLegacy,
    Safetensors,
}

/// `torch.save`'s legacy magic number.
const LEGACY_MAGIC: i128 = 0x1950a86a20f9469cfc6c;
const LEGACY_PROTOCOL: i128 = 1001;

fn corrupt(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::WeightsCorrupt, msg)
}

/// Guesses the format from the first bytes.
pub fn detect(head: &[u8]) -> Result<Format> {
    if head.starts_with(b"PK\x03\x04") {
        Ok(Format::TorchZip)
    } else if head.starts_with(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19") {
        Ok(Format::TorchLegacy)
    } else if head.len() >= 9 && head[8] == b'{' {
        Ok(Format::Safetensors)
    } else {
        Err(corrupt("not a weight file: neither a torch zip, a legacy torch pickle nor safetensors"))
    }
}

/// The number of classes of `arch`'s head in a state dict, when the head is there.
pub fn head_classes(arch: crate::train::arch::Arch, tensors: &[(String, Tensor)]) -> Option<i64> {
    let key = format!("{}.weight", arch.network(1).head_name);
    tensors.iter().find(|(k, _)| *k == key).map(|(_, t)| t.size()[0])
}

/// Reads a state dict from a file, in file order.
pub fn read_file(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path).map_err(|e| corrupt(format!("cannot read {}: {e}", path.display())))?;
    read_bytes(&bytes).map_err(|e| Error::new(e.code, format!("{}: {}", path.display(), e.message)))
}

/// Reads a state dict from the bytes of a weight file.
pub fn read_bytes(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    match detect(bytes)? {
        Format::TorchZip => read_zip(bytes),
        Format::TorchLegacy => read_legacy(bytes),
        Format::Safetensors => read_safetensors(bytes),
    }
}

fn read_zip(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| corrupt(format!("truncated or damaged zip archive: {e}")))?;
    let pkl = zip
        .file_names()
        .filter_map(|n| n.ok().map(|n| n.into_owned()))
        .find(|n| n.ends_with("/data.pkl") && n.matches('/').count() == 1)
        .ok_or_else(|| corrupt("the zip archive has no <name>/data.pkl: not a torch.save file"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    // What the entries may expand to, together: torch.save stores them uncompressed, so their
    // bytes are about the file's; a size in a header is never trusted for an allocation.
    let mut budget = (bytes.len() as u64).saturating_mul(2).saturating_add(1 << 20);
    let mut read_entry = |zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>, name: &str| -> Result<Vec<u8>> {
        let f = zip.by_name(name).map_err(|e| corrupt(format!("zip entry {name}: {e}")))?;
        let declared = f.size();
        if declared > budget {
            return Err(corrupt(format!(
                "zip entry {name} claims {declared} bytes, more than the file ({} bytes) can hold",
                bytes.len()
            )));
        }
        let mut out = Vec::with_capacity(declared as usize);
        f.take(declared + 1).read_to_end(&mut out).map_err(|e| corrupt(format!("zip entry {name} is damaged: {e}")))?;
        if out.len() as u64 != declared {
            return Err(corrupt(format!("zip entry {name} holds {} bytes, not the {declared} it declares", out.len())));
        }
        budget -= declared;
        Ok(out)
    };
    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder")) {
        if order != b"little" {
            return Err(corrupt(format!("byte order {:?} is not supported", String::from_utf8_lossy(&order))));
        }
    }
    let pickled = read_entry(&mut zip, &pkl)?;
    let mut pos = 0;
    let root = pickle::load(&pickled, &mut pos)?;
    let entries = state_dict_entries(root)?;
    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    for (_, spec) in &entries {
        if !storages.contains_key(&spec.storage) {
            let data = read_entry(&mut zip, &format!("{prefix}data/{}", spec.storage))?;
            storages.insert(spec.storage.clone(), data);
        }
    }
    build(entries, &storages)
}

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let mut pos = 0;
    if pickle::load(bytes, &mut pos)? != Value::Int(LEGACY_MAGIC) {
        return Err(corrupt("bad legacy magic number"));
    }
    if pickle::load(bytes, &mut pos)? != Value::Int(LEGACY_PROTOCOL) {
        return Err(corrupt("unsupported legacy protocol version"));
    }
    let _sys_info = pickle::load(bytes, &mut pos)?;
    let root = pickle::load(bytes, &mut pos)?;
    let keys = match pickle::load(bytes, &mut pos)? {
        Value::List(keys) => keys
            .into_iter()
            .map(|k| match k {
                Value::Str(s) => Ok(s),
                Value::Int(i) => Ok(i.to_string()),
                _ => Err(corrupt("a storage key is not a string")),
            })
            .collect::<Result<Vec<_>>>()?,
        _ => return Err(corrupt("the storage key list is missing")),
    };
    let entries = state_dict_entries(root)?;
    let kinds: HashMap<&str, Kind> = entries.iter().map(|(_, s)| (s.storage.as_str(), s.kind)).collect();
    let mut storages = HashMap::new();
    for key in &keys {
        let numel = read_u64(bytes, &mut pos)?;
        let kind = kinds.get(key.as_str()).copied().unwrap_or(Kind::Float);
        let len = usize::try_from(numel)
            .ok()
            .and_then(|n| n.checked_mul(kind.elt_size_in_bytes()))
            .ok_or_else(|| corrupt(format!("storage {key} is impossibly large")))?;
        let end = pos.checked_add(len).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            corrupt(format!("the file ends early: storage {key} needs {len} bytes at byte {pos} of {}", bytes.len()))
        })?;
        storages.insert(key.clone(), bytes[pos..end].to_vec());
        pos = end;
    }
    build(entries, &storages)
}

fn read_u64(bytes: &[u8], pos: &mut usize) -> Result<u64> {
    let end = pos.checked_add(8).filter(|&e| e <= bytes.len()).ok_or_else(|| corrupt("the file ends early"))?;
    let v = u64::from_le_bytes(bytes[*pos..end].try_into().expect("8 bytes"));
    *pos = end;
    Ok(v)
}

fn read_safetensors(bytes: &[u8]) -> Result<Vec<(String, Tensor)>> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| corrupt(format!("safetensors: {e}")))?;
    let mut out = Vec::new();
    let mut names: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    names.sort_by_key(|(_, view)| view.data().as_ptr());
    for (name, view) in names {
        let kind = match view.dtype() {
            safetensors::Dtype::F32 => Kind::Float,
            safetensors::Dtype::F64 => Kind::Double,
            safetensors::Dtype::F16 => Kind::Half,
            safetensors::Dtype::BF16 => Kind::BFloat16,
            safetensors::Dtype::I64 => Kind::Int64,
            safetensors::Dtype::I32 => Kind::Int,
            safetensors::Dtype::I16 => Kind::Int16,
            safetensors::Dtype::I8 => Kind::Int8,
            safetensors::Dtype::U8 => Kind::Uint8,
            safetensors::Dtype::BOOL => Kind::Bool,
            other => return Err(corrupt(format!("tensor {name}: dtype {other:?} is not supported"))),
        };
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        let t =
            Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|e| corrupt(format!("tensor {name}: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

/// The `name → tensor` entries of a pickled state dict. A checkpoint that wraps its state dict
/// under `state_dict`, `model` or `model_state_dict` is unwrapped.
fn state_dict_entries(root: Value) -> Result<Vec<(String, TensorSpec)>> {
    let Value::Dict(items) = root else {
        return Err(corrupt("the file does not hold a dict of tensors"));
    };
    let all_tensors = items.iter().all(|(k, v)| matches!((k, v), (Value::Str(_), Value::Tensor(_))));
    if !all_tensors {
        let nested = items.iter().find_map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Dict(_)) if ["state_dict", "model", "model_state_dict"].contains(&k.as_str()) => {
                Some(v.clone())
            }
            _ => None,
        });
        if let Some(nested) = nested {
            return state_dict_entries(nested);
        }
        let odd: Vec<String> = items
            .iter()
            .filter(|(_, v)| !matches!(v, Value::Tensor(_)))
            .take(5)
            .map(|(k, _)| match k {
                Value::Str(s) => s.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        return Err(corrupt(format!("not a state dict: entries that are not tensors: {}", odd.join(", "))));
    }
    Ok(items
        .into_iter()
        .map(|(k, v)| match (k, v) {
            (Value::Str(k), Value::Tensor(t)) => (k, t),
            _ => unreachable!("checked above"),
        })
        .collect())
}

fn build(entries: Vec<(String, TensorSpec)>, storages: &HashMap<String, Vec<u8>>) -> Result<Vec<(String, Tensor)>> {
    let mut base: HashMap<&str, Tensor> = HashMap::new();
    let mut out = Vec::with_capacity(entries.len());
    for (name, spec) in entries {
        let data = storages
            .get(&spec.storage)
            .ok_or_else(|| corrupt(format!("{name}: storage {} is missing", spec.storage)))?;
        let elt = spec.kind.elt_size_in_bytes();
        if data.len() % elt != 0 {
            return Err(corrupt(format!(
                "{name}: storage {} has {} bytes, not a multiple of {elt}",
                spec.storage,
                data.len()
            )));
        }
        let numel = (data.len() / elt) as i64;
        check_view(&name, &spec, numel)?;
        if !base.contains_key(spec.storage.as_str()) {
            let t = Tensor::f_from_data_size(data, &[numel], spec.kind).map_err(|e| corrupt(format!("{name}: {e}")))?;
            base.insert(storages.get_key_value(&spec.storage).expect("present").0.as_str(), t);
        }
        let storage = &base[spec.storage.as_str()];
        let t = storage
            .f_as_strided(spec.size.as_slice(), spec.stride.as_slice(), Some(spec.offset))
            .and_then(|t| t.f_contiguous())
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        out.push((name, t));
    }
    Ok(out)
}

/// A view must lie inside its storage.
fn check_view(name: &str, spec: &TensorSpec, numel: i64) -> Result<()> {
    if spec.size.len() != spec.stride.len() || spec.offset < 0 {
        return Err(corrupt(format!("{name}: inconsistent size/stride/offset")));
    }
    if spec.size.iter().any(|&s| s < 0) || spec.stride.iter().any(|&s| s < 0) {
        return Err(corrupt(format!("{name}: negative size or stride")));
    }
    if spec.size.contains(&0) {
        return Ok(());
    }
    // A view holds at most its storage's elements (state dicts hold no broadcast views): its
    // shape drives what copying it allocates.
    let elements = spec.size.iter().try_fold(1i64, |acc, &s| acc.checked_mul(s));
    if elements.is_none_or(|n| n > numel) {
        return Err(corrupt(format!(
            "{name}: a view of shape {:?} holds more elements than its storage ({numel})",
            spec.size
        )));
    }
    let last = spec
        .size
        .iter()
        .zip(&spec.stride)
        .try_fold(spec.offset, |acc, (&s, &st)| (s - 1).checked_mul(st).and_then(|x| acc.checked_add(x)))
        .ok_or_else(|| corrupt(format!("{name}: view overflows")))?;
    if last >= numel {
        return Err(corrupt(format!("{name}: view reaches element {last} of a storage of {numel}: truncated")));
    }
    Ok(())
}

//! Reader for MATLAB level-5 MAT-files (the format of the Oxford Flowers 102 label and split files): numeric matrices, compressed or not; anything else is skipped.
use std::collections::BTreeMap;
use std::io::Read;

/// A numeric matrix, values converted to f64, column-major as stored, with its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub dims: Vec<usize>,
    pub data: Vec<f64>,
}

impl Matrix {
    /// The values, when the matrix is a vector (at most one dimension larger than 1), else `None`.
    pub fn as_vector(&self) -> Option<&[f64]> {
        (self.dims.iter().filter(|&&d| d > 1).count() <= 1).then_some(self.data.as_slice())
    }
}

const MI_INT8: u32 = 1;
const MI_UINT8: u32 = 2;
const MI_INT16: u32 = 3;
const MI_UINT16: u32 = 4;
const MI_INT32: u32 = 5;
const MI_UINT32: u32 = 6;
const MI_SINGLE: u32 = 7;
const MI_DOUBLE: u32 = 9;
const MI_INT64: u32 = 12;
const MI_UINT64: u32 = 13;
const MI_MATRIX: u32 = 14;
const MI_COMPRESSED: u32 = 15;
/// Array classes mxDOUBLE (6) to mxUINT64 (15) are numeric; the others (cell, struct, object, char, sparse,
/// function handle, opaque) are skipped.
const NUMERIC_CLASSES: std::ops::RangeInclusive<u32> = 6..=15;

/// Parses a whole file. Returns variables by name. Non-numeric variables (cell, struct, char, sparse, object,
/// function handles) are skipped, not errors. `max_bytes` caps the total size of all decompressed
/// (`miCOMPRESSED`) data in the file; exceeding it is an error, so a small hostile file cannot exhaust memory.
pub fn parse(bytes: &[u8], max_bytes: usize) -> Result<BTreeMap<String, Matrix>, String> {
    if bytes.len() < 128 {
        return Err(format!("not a MAT-file: {} bytes, shorter than the 128-byte header", bytes.len()));
    }
    let big = match &bytes[126..128] {
        b"IM" => false,
        b"MI" => true,
        other => {
            let other = String::from_utf8_lossy(other);
            return Err(format!("not a level-5 MAT-file: endian indicator {other:?} is neither \"IM\" nor \"MI\""));
        }
    };
    let version =
        if big { u16::from_be_bytes([bytes[124], bytes[125]]) } else { u16::from_le_bytes([bytes[124], bytes[125]]) };
    if version != 0x0100 {
        let hint = if version == 0x0200 { " (MAT-file 7.3 is HDF5, not supported)" } else { "" };
        return Err(format!("unsupported MAT-file version {version:#06x}{hint}; expected 0x0100"));
    }
    let mut out = BTreeMap::new();
    let mut budget = max_bytes;
    let mut r = Reader { buf: bytes, pos: 128, big };
    while r.pos < bytes.len() {
        let (ty, data) = r.element("top-level data element")?;
        match ty {
            MI_MATRIX => read_matrix(data, big, &mut out)?,
            MI_COMPRESSED => {
                let inflated = inflate(data, &mut budget, max_bytes)?;
                let mut inner = Reader { buf: &inflated, pos: 0, big };
                while inner.pos < inflated.len() {
                    let (ty, data) = inner.element("compressed data element")?;
                    match ty {
                        MI_MATRIX => read_matrix(data, big, &mut out)?,
                        MI_COMPRESSED => return Err("nested compressed data element".into()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Inflates one zlib stream, charging its size to `budget` (what is left of `max_bytes`).
fn inflate(data: &[u8], budget: &mut usize, max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut inflated = Vec::new();
    let cap = (*budget as u64).saturating_add(1);
    flate2::read::ZlibDecoder::new(data)
        .take(cap)
        .read_to_end(&mut inflated)
        .map_err(|e| format!("bad compressed data element: {e}"))?;
    if inflated.len() > *budget {
        return Err(format!("decompressed data exceeds the limit of {max_bytes} bytes"));
    }
    *budget -= inflated.len();
    Ok(inflated)
}

/// Cursor over a sequence of data elements in the file's byte order.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
}

impl<'a> Reader<'a> {
    fn u32_at(&self, pos: usize, what: &str) -> Result<u32, String> {
        let b = pos.checked_add(4).and_then(|end| self.buf.get(pos..end)).ok_or_else(|| {
            format!("truncated {what}: tag at byte {pos} runs past the end ({} bytes)", self.buf.len())
        })?;
        let b = [b[0], b[1], b[2], b[3]];
        Ok(if self.big { u32::from_be_bytes(b) } else { u32::from_le_bytes(b) })
    }

    /// Reads one data element (8-byte tag or 4-byte small-element tag) and returns its type and data,
    /// moving past the 8-byte alignment padding (clamped at the end, which may lack it).
    fn element(&mut self, what: &str) -> Result<(u32, &'a [u8]), String> {
        let start = self.pos;
        let first = self.u32_at(start, what)?;
        if first >> 16 != 0 {
            let (len, ty) = ((first >> 16) as usize, first & 0xffff);
            if len > 4 {
                return Err(format!("{what} at byte {start}: small data element claims {len} bytes (at most 4)"));
            }
            let data = self
                .buf
                .get(start + 4..start + 4 + len)
                .ok_or_else(|| format!("truncated {what} at byte {start}: small data element past the end"))?;
            self.pos = (start + 8).min(self.buf.len());
            return Ok((ty, data));
        }
        let len = self.u32_at(start + 4, what)? as usize;
        let begin = start + 8;
        let data = begin.checked_add(len).and_then(|end| self.buf.get(begin..end)).ok_or_else(|| {
            format!(
                "truncated {what} at byte {start}: {len} bytes of data claimed, {} available",
                self.buf.len().saturating_sub(begin)
            )
        })?;
        // Compressed elements are written without padding; all others are padded to 8 bytes.
        let padded = if first == MI_COMPRESSED { len } else { len.div_ceil(8) * 8 };
        self.pos = begin.saturating_add(padded).min(self.buf.len());
        Ok((first, data))
    }
}

/// Reads the subelements of one miMATRIX element and adds it to `out` when it is a named numeric array.
fn read_matrix(data: &[u8], big: bool, out: &mut BTreeMap<String, Matrix>) -> Result<(), String> {
    if data.is_empty() {
        return Ok(()); // an empty placeholder array, as MATLAB writes for empty cells
    }
    let mut r = Reader { buf: data, pos: 0, big };
    let (ty, flags) = r.element("array flags")?;
    if ty != MI_UINT32 || flags.len() < 4 {
        return Err(format!("array flags: expected miUINT32 of 8 bytes, found type {ty} of {} bytes", flags.len()));
    }
    let flags0 = Reader { buf: flags, pos: 0, big }.u32_at(0, "array flags")?;
    let class = flags0 & 0xff;
    if !NUMERIC_CLASSES.contains(&class) {
        return Ok(());
    }
    let (ty, raw_dims) = r.element("dimensions")?;
    if ty != MI_INT32 || raw_dims.len() % 4 != 0 || raw_dims.is_empty() {
        return Err(format!("dimensions: expected miINT32 values, found type {ty} of {} bytes", raw_dims.len()));
    }
    let mut dims = Vec::with_capacity(raw_dims.len() / 4);
    for v in values(MI_INT32, raw_dims, big)? {
        if v < 0.0 {
            return Err(format!("dimensions: negative dimension {v}"));
        }
        dims.push(v as usize);
    }
    let (ty, name) = r.element("array name")?;
    if ty != MI_INT8 {
        return Err(format!("array name: expected miINT8, found type {ty}"));
    }
    let name = String::from_utf8_lossy(name).into_owned();
    let (ty, real) = r.element(&format!("real part of '{name}'"))?;
    let data = values(ty, real, big).map_err(|e| format!("variable '{name}': {e}"))?;
    let count = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if count != Some(data.len()) {
        return Err(format!("variable '{name}': dimensions {dims:?} do not match {} stored values", data.len()));
    }
    out.insert(name, Matrix { dims, data });
    Ok(())
}

/// Converts the data of a numeric element of type `ty` to f64.
fn values(ty: u32, raw: &[u8], big: bool) -> Result<Vec<f64>, String> {
    let size = match ty {
        MI_INT8 | MI_UINT8 => 1,
        MI_INT16 | MI_UINT16 => 2,
        MI_INT32 | MI_UINT32 | MI_SINGLE => 4,
        MI_DOUBLE | MI_INT64 | MI_UINT64 => 8,
        _ => return Err(format!("element type {ty} is not numeric")),
    };
    if raw.len() % size != 0 {
        return Err(format!("{} bytes is not a whole number of {size}-byte values (type {ty})", raw.len()));
    }
    let mut out = Vec::with_capacity(raw.len() / size);
    for c in raw.chunks_exact(size) {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(c);
        if big {
            b[..size].reverse(); // to little-endian
        }
        let v = match ty {
            MI_INT8 => b[0] as i8 as f64,
            MI_UINT8 => b[0] as f64,
            MI_INT16 => i16::from_le_bytes([b[0], b[1]]) as f64,
            MI_UINT16 => u16::from_le_bytes([b[0], b[1]]) as f64,
            MI_INT32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            MI_UINT32 => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            MI_SINGLE => f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64,
            MI_DOUBLE => f64::from_le_bytes(b),
            MI_INT64 => i64::from_le_bytes(b) as f64,
            _ => u64::from_le_bytes(b) as f64,
        };
        out.push(v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Byte-level writer of MAT-file pieces in either byte order.
    struct W {
        big: bool,
        buf: Vec<u8>,
    }

    impl W {
        fn new(big: bool) -> Self {
            W { big, buf: Vec::new() }
        }
        fn u32(&mut self, v: u32) {
            self.buf.extend(if self.big { v.to_be_bytes() } else { v.to_le_bytes() });
        }
        fn elem(&mut self, ty: u32, data: &[u8]) {
            self.u32(ty);
            self.u32(data.len() as u32);
            self.buf.extend(data);
            self.buf.resize(self.buf.len().div_ceil(8) * 8, 0);
        }
        fn small(&mut self, ty: u32, data: &[u8]) {
            self.u32((data.len() as u32) << 16 | ty);
            self.buf.extend(data);
            self.buf.resize(self.buf.len().div_ceil(8) * 8, 0);
        }
        fn header(big: bool) -> Vec<u8> {
            let mut h = b"MATLAB 5.0 MAT-file, written by hand".to_vec();
            h.resize(124, b' ');
            h.extend(if big { [0x01, 0x00, b'M', b'I'] } else { [0x00, 0x01, b'I', b'M'] });
            h
        }
        /// One miMATRIX element: class, dims, name, and the real part as (type, bytes in file order).
        fn matrix(big: bool, class: u32, dims: &[i32], name: &str, small_name: bool, real: (u32, Vec<u8>)) -> Vec<u8> {
            let mut m = W::new(big);
            m.elem(MI_UINT32, &[m.ord(class), m.ord(0)].concat());
            let dims: Vec<u8> = dims.iter().flat_map(|&d| m.ord(d as u32)).collect();
            m.elem(MI_INT32, &dims);
            if small_name {
                m.small(MI_INT8, name.as_bytes());
            } else {
                m.elem(MI_INT8, name.as_bytes());
            }
            m.elem(real.0, &real.1);
            let mut w = W::new(big);
            w.elem(MI_MATRIX, &m.buf);
            w.buf
        }
        fn ord(&self, v: u32) -> [u8; 4] {
            if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        }
    }

    fn doubles(big: bool, v: &[f64]) -> (u32, Vec<u8>) {
        (MI_DOUBLE, v.iter().flat_map(|x| if big { x.to_be_bytes() } else { x.to_le_bytes() }).collect())
    }

    fn file(big: bool, elements: &[Vec<u8>]) -> Vec<u8> {
        let mut f = W::header(big);
        elements.iter().for_each(|e| f.extend(e));
        f
    }

    fn compress(element: &[u8]) -> Vec<u8> {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(element).unwrap();
        let z = z.finish().unwrap();
        let mut w = W::new(false);
        w.u32(MI_COMPRESSED);
        w.u32(z.len() as u32);
        w.buf.extend(z);
        w.buf
    }

    const V: [f64; 5] = [1.0, 2.5, -3.0, 102.0, 0.0];

    #[test]
    fn uncompressed_double_row() {
        let f = file(false, &[W::matrix(false, 6, &[1, 5], "labels", false, doubles(false, &V))]);
        let vars = parse(&f, 1 << 20).unwrap();
        let m = &vars["labels"];
        assert_eq!(m.dims, vec![1, 5]);
        assert_eq!(m.as_vector(), Some(&V[..]));
    }

    #[test]
    fn small_element_name_and_uint8_storage() {
        let f = file(false, &[W::matrix(false, 6, &[5, 1], "tst", true, (MI_UINT8, vec![1, 2, 3, 200, 255]))]);
        let vars = parse(&f, 1 << 20).unwrap();
        assert_eq!(vars["tst"], Matrix { dims: vec![5, 1], data: vec![1.0, 2.0, 3.0, 200.0, 255.0] });
    }

    #[test]
    fn compressed_and_big_endian_and_uint16() {
        let m = W::matrix(false, 6, &[1, 5], "valid", false, doubles(false, &V));
        let f = file(false, &[compress(&m), W::matrix(false, 6, &[1, 2], "trn", true, (MI_UINT16, vec![1, 0, 0, 1]))]);
        let vars = parse(&f, 1 << 20).unwrap();
        assert_eq!(vars["valid"].data, V);
        assert_eq!(vars["trn"].data, vec![1.0, 256.0]);
        let be = file(true, &[W::matrix(true, 6, &[1, 5], "lab", true, doubles(true, &V))]);
        let i16s = W::matrix(true, 10, &[2, 1], "k", false, (MI_INT16, vec![0xff, 0xfe, 0x01, 0x02]));
        let vars = parse(&[be, i16s].concat(), 1 << 20).unwrap();
        assert_eq!(vars["lab"].data, V);
        assert_eq!(vars["k"].data, vec![-2.0, 258.0]);
    }

    #[test]
    fn skips_char_and_empty_and_takes_real_part() {
        let chars = W::matrix(false, 4, &[1, 2], "s", true, (4, vec![b'h', 0, b'i', 0]));
        let mut cplx = W::matrix(false, 6 | 0x800, &[1, 1], "z", true, doubles(false, &[7.0]));
        // Append the imaginary part inside the miMATRIX element and fix its length.
        let mut imag = W::new(false);
        imag.elem(MI_DOUBLE, &3.0f64.to_le_bytes());
        cplx.extend(imag.buf);
        let n = (cplx.len() - 8) as u32;
        cplx[4..8].copy_from_slice(&n.to_le_bytes());
        let f = file(false, &[chars, compress(&[14, 0, 0, 0, 0, 0, 0, 0]), cplx]);
        let vars = parse(&f, 1 << 20).unwrap();
        assert_eq!(vars.keys().collect::<Vec<_>>(), vec!["z"]);
        assert_eq!(vars["z"].data, vec![7.0]);
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let good = file(false, &[W::matrix(false, 6, &[1, 5], "labels", false, doubles(false, &V))]);
        assert!(parse(&good[..128], 1 << 20).unwrap().is_empty(), "a header alone is an empty file");
        for cut in (0..good.len()).filter(|&c| c != 128) {
            assert!(parse(&good[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut bad = good.clone();
        bad[126..128].copy_from_slice(b"XX");
        assert!(parse(&bad, 1 << 20).unwrap_err().contains("endian"));
        let mut v73 = good.clone();
        v73[124..126].copy_from_slice(&[0, 2]);
        assert!(parse(&v73, 1 << 20).unwrap_err().contains("HDF5"));
        let mut huge = good.clone();
        huge[132..136].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse(&huge, 1 << 20).unwrap_err().contains("truncated"));
        let wrong_dims = file(false, &[W::matrix(false, 6, &[2, 5], "x", false, doubles(false, &V))]);
        assert!(parse(&wrong_dims, 1 << 20).unwrap_err().contains("do not match"));
        let mut zbad = compress(&W::matrix(false, 6, &[1, 5], "x", false, doubles(false, &V)));
        zbad[10] ^= 0xff;
        assert!(parse(&file(false, &[zbad]), 1 << 20).is_err());
    }

    #[test]
    fn decompression_limit() {
        let big = W::matrix(false, 6, &[1, 200_000], "x", false, doubles(false, &[0.0; 200_000]));
        let f = file(false, &[compress(&big)]);
        assert!(f.len() < 10_000);
        let err = parse(&f, 1_000_000).err().unwrap_or_default();
        assert!(err.contains("limit of 1000000 bytes"), "{err}");
        assert_eq!(parse(&f, 2_000_000).unwrap()["x"].data.len(), 200_000);
    }
}

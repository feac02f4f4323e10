//! Reading a dataset's files from a folder, a `.zip` or a `.tar` / `.tar.gz`, with limits and
//! without path escapes: every entry becomes a relative path made of plain components and its
//! bytes. Links (symbolic or hard), absolute paths and `..` are refused; sizes are checked as
//! bytes arrive, never trusted from headers (zip bombs stop at the limit, not after), and so is
//! how far compressed data expands (`max_ratio`), which bounds the memory a small archive can
//! claim.
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorCode, Result};

/// Limits on what an upload may contain.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveLimits {
    /// Size of the archive file itself.
    pub max_archive_bytes: u64,
    /// Number of regular files.
    pub max_files: usize,
    /// Uncompressed bytes of all files together.
    pub max_total_bytes: u64,
    /// Uncompressed bytes of one file.
    pub max_file_bytes: u64,
    /// How far compressed data may expand: uncompressed bytes per compressed byte, counted as
    /// bytes arrive. A zip entry may hold at most `max_ratio` × its compressed size, and a zip's
    /// files together at most `max_ratio` × the archive's size (which also catches entries that
    /// share their compressed data); a `.tar.gz` may decompress to at most `max_ratio` × the
    /// compressed bytes read so far. The first MiB of each is free (small, very compressible files
    /// such as label lists). Every file is held in memory while the dataset is read, so without
    /// this a bomb of a few MB would claim up to `max_total_bytes` of memory. Photos hardly
    /// compress (about 1:1); 0 turns the check off. Folders and plain `.tar` files are not
    /// compressed and not concerned.
    pub max_ratio: u64,
}

impl Default for ArchiveLimits {
    fn default() -> Self {
        Self {
            max_archive_bytes: 4 << 30,
            max_files: 250_000,
            max_total_bytes: 16 << 30,
            max_file_bytes: 64 << 20,
            max_ratio: 100,
        }
    }
}

/// What data compressed `compressed` bytes may expand to under `max_ratio` (see `ArchiveLimits`).
fn expansion_cap(max_ratio: u64, compressed: u64) -> u64 {
    if max_ratio == 0 {
        u64::MAX
    } else {
        max_ratio.saturating_mul(compressed).saturating_add(RATIO_FREE_BYTES)
    }
}

/// The first bytes of an entry or a stream that `max_ratio` does not count against.
const RATIO_FREE_BYTES: u64 = 1 << 20;

/// The files of a dataset: relative `/`-separated path → bytes, sorted by path.
pub type Files = BTreeMap<String, Vec<u8>>;

fn too_large(msg: String) -> Error {
    Error::new(ErrorCode::DatasetTooLarge, msg)
}

fn unsafe_path(msg: String) -> Error {
    Error::new(ErrorCode::DatasetUnsafePath, msg)
}

fn bad_archive(msg: String) -> Error {
    Error::new(ErrorCode::DatasetArchiveInvalid, msg)
}

/// Where each file of a dataset goes as it is read: its path and bytes, one at a time.
pub type Sink<'a> = &'a mut dyn FnMut(String, Vec<u8>) -> Result<()>;

/// Reads a folder, a zip or a tar(.gz) file into memory (tests, fuzzing, small inputs).
pub fn read_path(path: &Path, limits: &ArchiveLimits) -> Result<Files> {
    collect(|sink| visit_path(path, limits, sink))
}

/// Reads a zip or tar(.gz) from a seekable source into memory.
pub fn read_archive<R: Read + std::io::Seek>(src: R, limits: &ArchiveLimits) -> Result<Files> {
    collect(|sink| visit_archive(src, limits, sink))
}

fn collect(visit: impl FnOnce(Sink) -> Result<()>) -> Result<Files> {
    let mut files = Files::new();
    visit(&mut |path, bytes| {
        files.insert(path, bytes);
        Ok(())
    })?;
    Ok(files)
}

/// Streams a folder, a zip or a tar(.gz) file: each file's bytes go to `sink` as they are read,
/// under the limits, so that whoever reads a dataset holds only what it keeps.
pub fn visit_path(path: &Path, limits: &ArchiveLimits, sink: Sink) -> Result<()> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| Error::new(ErrorCode::DatasetArchiveInvalid, format!("cannot read {}: {e}", path.display())))?;
    if meta.is_dir() {
        let mut budget = Budget::new(limits, None, sink);
        walk(path, "", &mut budget)?;
        return budget.finish();
    }
    if meta.len() > limits.max_archive_bytes {
        return Err(too_large(format!(
            "the archive is {} bytes; the limit is {} (dataset.limits.max_archive_bytes)",
            meta.len(),
            limits.max_archive_bytes
        )));
    }
    let file = std::fs::File::open(path).map_err(|e| Error::io("opening the archive", path, e))?;
    visit_archive(file, limits, sink)
}

/// Streams a zip or tar(.gz) from a seekable source, recognised by its first bytes.
pub fn visit_archive<R: Read + std::io::Seek>(mut src: R, limits: &ArchiveLimits, sink: Sink) -> Result<()> {
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut src, &mut magic)?;
    src.seek(std::io::SeekFrom::Start(0)).map_err(read_error)?;
    if n == 0 {
        return Err(bad_archive("the archive is empty".into()));
    }
    if magic.starts_with(b"PK") {
        let size = src.seek(std::io::SeekFrom::End(0)).map_err(read_error)?;
        src.seek(std::io::SeekFrom::Start(0)).map_err(read_error)?;
        read_zip(src, size, limits, sink)
    } else if magic.starts_with(&[0x1f, 0x8b]) {
        let counts = Rc::new(Inflation::default());
        let gz = flate2::read::GzDecoder::new(Counted { inner: src, counts: counts.clone() });
        let mut stream = Expanding { inner: gz, counts: counts.clone(), max_ratio: limits.max_ratio };
        // The tar ends before the gzip stream does: read on to its end, where the decoder checks
        // the stream's CRC and length, so that a truncated or corrupted one is refused.
        let files = read_tar(&mut stream, limits, sink).and_then(|()| {
            std::io::copy(&mut stream, &mut std::io::sink())
                .map_err(|e| bad_archive(format!("the gzip stream is truncated or corrupt: {e}")))?;
            Ok(())
        });
        if counts.exceeded.get() {
            return Err(too_large(format!(
                "the archive expands to more than {} times its compressed size (dataset.limits.max_ratio)",
                limits.max_ratio
            )));
        }
        files
    } else {
        read_tar(src, limits, sink)
    }
}

/// A compressed stream's bytes in (read by the decompressor) and out (read from it).
#[derive(Default)]
struct Inflation {
    compressed: Cell<u64>,
    expanded: Cell<u64>,
    /// Set when the output passed `max_ratio`: the read failed for that reason.
    exceeded: Cell<bool>,
}

/// Below the decompressor: counts the compressed bytes it reads.
struct Counted<R> {
    inner: R,
    counts: Rc<Inflation>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counts.compressed.set(self.counts.compressed.get() + n as u64);
        Ok(n)
    }
}

/// Above the decompressor: fails the read once its output passes `max_ratio` × the compressed
/// bytes read so far — every byte, those of skipped entries and padding included.
struct Expanding<R> {
    inner: R,
    counts: Rc<Inflation>,
    max_ratio: u64,
}

impl<R: Read> Read for Expanding<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let c = &self.counts;
        c.expanded.set(c.expanded.get() + n as u64);
        if c.expanded.get() > expansion_cap(self.max_ratio, c.compressed.get()) {
            c.exceeded.set(true);
            return Err(std::io::Error::other("the compressed stream expands past dataset.limits.max_ratio"));
        }
        Ok(n)
    }
}

/// A failure reading the archive itself (not one of its entries).
fn read_error(e: std::io::Error) -> Error {
    Error::internal(format!("reading the archive: {e}"))
}

fn read_up_to(src: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match src.read(&mut buf[n..]).map_err(read_error)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Checks one entry name and returns its normalised relative path (`None` for entries to ignore:
/// macOS resource forks and hidden files).
pub fn clean_path(name: &str) -> Result<Option<String>> {
    if name.contains('\0') || name.contains('\\') {
        return Err(unsafe_path(format!("entry {name:?}: backslashes and NUL are not allowed in paths")));
    }
    let mut parts = Vec::new();
    for c in Path::new(name).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_path(format!("entry {name:?} climbs out with '..'"))),
            Component::RootDir | Component::Prefix(_) => {
                return Err(unsafe_path(format!("entry {name:?} is an absolute path")))
            }
        }
    }
    if parts.is_empty() || parts.iter().any(|p| p.starts_with('.') || p == "__MACOSX") {
        return Ok(None);
    }
    Ok(Some(parts.join("/")))
}

struct Budget<'a, 's> {
    limits: &'a ArchiveLimits,
    /// Every path read so far (two entries of one path are refused).
    names: std::collections::BTreeSet<String>,
    sink: Sink<'s>,
    total: u64,
    /// A zip's size: its files together may hold `max_ratio` times that.
    zip_size: Option<u64>,
}

/// Which limit bounds one entry's read.
enum Cap {
    File,
    Total,
    /// The entry's own expansion: its compressed size.
    EntryRatio(u64),
    /// The zip's expansion: its size.
    ZipRatio(u64),
}

impl<'a, 's> Budget<'a, 's> {
    fn new(limits: &'a ArchiveLimits, zip_size: Option<u64>, sink: Sink<'s>) -> Self {
        Budget { limits, names: Default::default(), sink, total: 0, zip_size }
    }

    fn finish(self) -> Result<()> {
        if self.names.is_empty() {
            return Err(bad_archive("the dataset contains no files".into()));
        }
        Ok(())
    }

    /// Reads one entry's bytes (`compressed` of them in the archive, for a zip), stopping at the
    /// limits.
    fn add(&mut self, path: String, reader: &mut dyn Read, compressed: Option<u64>) -> Result<()> {
        let l = self.limits;
        if self.names.len() >= l.max_files {
            return Err(too_large(format!("more than {} files (dataset.limits.max_files)", l.max_files)));
        }
        let mut caps = vec![(l.max_file_bytes, Cap::File), (l.max_total_bytes.saturating_sub(self.total), Cap::Total)];
        if let Some(c) = compressed {
            caps.push((expansion_cap(l.max_ratio, c), Cap::EntryRatio(c)));
        }
        if let Some(size) = self.zip_size {
            caps.push((expansion_cap(l.max_ratio, size).saturating_sub(self.total), Cap::ZipRatio(size)));
        }
        let (cap, which) = caps.into_iter().min_by_key(|(cap, _)| *cap).expect("caps");
        let mut bytes = Vec::new();
        reader
            .take(cap.saturating_add(1))
            .read_to_end(&mut bytes)
            .map_err(|e| bad_archive(format!("entry {path}: cannot read: {e}")))?;
        if bytes.len() as u64 > cap {
            return Err(too_large(match which {
                Cap::File => format!("{path} is larger than {cap} bytes (dataset.limits.max_file_bytes)"),
                Cap::Total => format!(
                    "the files add up to more than {} bytes uncompressed (dataset.limits.max_total_bytes)",
                    l.max_total_bytes
                ),
                Cap::EntryRatio(c) => format!(
                    "{path} expands to more than {} times its {c} compressed bytes (dataset.limits.max_ratio)",
                    l.max_ratio
                ),
                Cap::ZipRatio(size) => format!(
                    "the files expand to more than {} times the archive's {size} bytes (dataset.limits.max_ratio)",
                    l.max_ratio
                ),
            }));
        }
        self.total += bytes.len() as u64;
        if !self.names.insert(path.clone()) {
            return Err(bad_archive(format!("entry {path} appears twice")));
        }
        (self.sink)(path, bytes)
    }
}

fn read_zip<R: Read + std::io::Seek>(src: R, size: u64, limits: &ArchiveLimits, sink: Sink) -> Result<()> {
    let mut zip = zip::ZipArchive::new(src).map_err(|e| bad_archive(format!("not a readable zip file: {e}")))?;
    let mut budget = Budget::new(limits, Some(size), sink);
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| bad_archive(format!("zip entry {i}: {e}")))?;
        let name = entry.name().map_err(|e| bad_archive(format!("zip entry {i}: {e}")))?.to_string();
        // A symlink's mode carries S_IFLNK; its "content" is the target path.
        if entry.unix_mode().is_some_and(|m| m & 0o170000 == 0o120000) {
            return Err(unsafe_path(format!("entry {name:?} is a symbolic link; links are not allowed")));
        }
        let Some(path) = clean_path(&name)? else { continue };
        if entry.is_dir() {
            continue;
        }
        // The zip crate reads no more than the entry's compressed size from the archive.
        let compressed = entry.compressed_size();
        budget.add(path, &mut entry, Some(compressed))?;
    }
    budget.finish()
}

fn read_tar<R: Read>(src: R, limits: &ArchiveLimits, sink: Sink) -> Result<()> {
    let mut archive = tar::Archive::new(src);
    let mut budget = Budget::new(limits, None, sink);
    let entries = archive.entries().map_err(|e| bad_archive(format!("not a readable tar file: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad_archive(format!("not a readable tar file: {e}")))?;
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            return Err(unsafe_path(format!("entry {name:?} is a link; links are not allowed")));
        }
        let Some(path) = clean_path(&name)? else { continue };
        if kind.is_dir() || kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(unsafe_path(format!("entry {name:?} is not a regular file ({kind:?})")));
        }
        budget.add(path, &mut entry, None)?;
    }
    budget.finish()
}

fn walk(dir: &Path, prefix: &str, budget: &mut Budget) -> Result<()> {
    let listing = |e| Error::io("listing the folder", dir, e);
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(listing)?.collect::<std::io::Result<_>>().map_err(listing)?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name.clone() } else { format!("{prefix}/{name}") };
        if clean_path(&rel)?.is_none() {
            continue;
        }
        let ft = e.file_type().map_err(|err| Error::io("reading the type of", &e.path(), err))?;
        if ft.is_symlink() {
            return Err(unsafe_path(format!("{rel} is a symbolic link; links are not allowed")));
        }
        if ft.is_dir() {
            walk(&e.path(), &rel, budget)?;
        } else if ft.is_file() {
            let mut file = std::fs::File::open(e.path()).map_err(|err| Error::io("opening", &e.path(), err))?;
            budget.add(rel, &mut file, None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        for (name, bytes) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default()).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn paths_are_cleaned_or_refused() {
        assert_eq!(clean_path("a/./b.jpg").unwrap().as_deref(), Some("a/b.jpg"));
        assert_eq!(clean_path("__MACOSX/a/._b.jpg").unwrap(), None);
        assert_eq!(clean_path("a/.DS_Store").unwrap(), None);
        for bad in ["../x.jpg", "a/../../x", "/etc/passwd", "a\\..\\b"] {
            assert_eq!(clean_path(bad).unwrap_err().code, ErrorCode::DatasetUnsafePath, "{bad}");
        }
    }

    #[test]
    fn zip_round_trip_and_limits() {
        let bytes = zip_of(&[("d/a/1.jpg", b"one"), ("d/b/2.jpg", b"two")]);
        let files = read_archive(Cursor::new(bytes.clone()), &ArchiveLimits::default()).unwrap();
        assert_eq!(files.keys().collect::<Vec<_>>(), ["d/a/1.jpg", "d/b/2.jpg"]);
        let limits = ArchiveLimits { max_files: 1, ..Default::default() };
        assert_eq!(read_archive(Cursor::new(bytes.clone()), &limits).unwrap_err().code, ErrorCode::DatasetTooLarge);
        let limits = ArchiveLimits { max_total_bytes: 5, ..Default::default() };
        let err = read_archive(Cursor::new(bytes), &limits).unwrap_err();
        assert!(err.message.contains("max_total_bytes"), "{}", err.message);
        let evil = zip_of(&[("../evil.jpg", b"x")]);
        assert_eq!(
            read_archive(Cursor::new(evil), &ArchiveLimits::default()).unwrap_err().code,
            ErrorCode::DatasetUnsafePath
        );
    }

    #[test]
    fn zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 50 << 20];
        let bytes = zip_of(&[("a/bomb.jpg", &zeros)]);
        assert!(bytes.len() < 1 << 20, "compresses well: {}", bytes.len());
        let limits = ArchiveLimits { max_file_bytes: 1 << 20, ..Default::default() };
        let err = read_archive(Cursor::new(bytes), &limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetTooLarge);
        assert!(err.message.contains("max_file_bytes"), "{}", err.message);
    }

    fn tar_gz_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, bytes) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, *bytes).unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&b.into_inner().unwrap()).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn compressed_data_expands_only_so_far() {
        let zeros = vec![0u8; 4 << 20];
        let too_far = |bytes: &[u8], limits: &ArchiveLimits| {
            let Err(err) = read_archive(Cursor::new(bytes.to_vec()), limits) else { panic!("accepted") };
            assert_eq!(err.code, ErrorCode::DatasetTooLarge, "{}", err.message);
            assert!(err.message.contains("max_ratio"), "{}", err.message);
            err.message
        };
        // One zip entry of 4 MiB of zeros: within max_file_bytes, far over max_ratio.
        let deep = zip_of(&[("d/a/0.jpg", &zeros)]);
        assert!(too_far(&deep, &ArchiveLimits::default()).contains("d/a/0.jpg expands"));
        // Entries of one MiB each are free, but not their sum: the archive's size bounds it.
        let names: Vec<String> = (0..32).map(|i| format!("d/a/{i}.jpg")).collect();
        let wide = zip_of(&names.iter().map(|n| (n.as_str(), &zeros[..1 << 20])).collect::<Vec<_>>());
        assert!(too_far(&wide, &ArchiveLimits::default()).contains("the archive's"));
        // A tar.gz: its stream as it decompresses.
        let tgz = tar_gz_of(&[("d/a/0.jpg", &zeros), ("d/b/0.jpg", &zeros)]);
        assert!(too_far(&tgz, &ArchiveLimits::default()).contains("compressed size"));
        // 0 turns the check off; data that hardly compresses (photos) is never near it.
        let off = ArchiveLimits { max_ratio: 0, ..Default::default() };
        for bytes in [deep, wide, tgz] {
            read_archive(Cursor::new(bytes), &off).unwrap();
        }
        let mut noise = vec![0u8; 3 << 20];
        rand::RngCore::fill_bytes(&mut <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1), &mut noise);
        let tight = ArchiveLimits { max_ratio: 2, ..Default::default() };
        read_archive(Cursor::new(zip_of(&[("d/a/0.jpg", &noise)])), &tight).unwrap();
        read_archive(Cursor::new(tar_gz_of(&[("d/a/0.jpg", &noise)])), &tight).unwrap();
    }

    #[test]
    fn tar_links_and_gzip() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        b.append_data(&mut h, "x/a/1.png", &b"abc"[..]).unwrap();
        let plain = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        // A gzip stream cut short or corrupted in its trailer (CRC, length), after the tar's end.
        let (mut corrupt, cut) = (gz.clone(), gz[..gz.len() - 4].to_vec());
        let n = corrupt.len();
        corrupt[n - 8] ^= 1;
        for bytes in [cut, corrupt] {
            let err = read_archive(Cursor::new(bytes), &ArchiveLimits::default()).unwrap_err();
            assert_eq!(err.code, ErrorCode::DatasetArchiveInvalid, "{}", err.message);
        }
        for bytes in [plain, gz] {
            let files = read_archive(Cursor::new(bytes), &ArchiveLimits::default()).unwrap();
            assert_eq!(files["x/a/1.png"], b"abc");
        }
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "x/a/link.png", "/etc/passwd").unwrap();
        let bytes = b.into_inner().unwrap();
        let err = read_archive(Cursor::new(bytes), &ArchiveLimits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetUnsafePath);
        let err = read_archive(Cursor::new(Vec::new()), &ArchiveLimits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetArchiveInvalid);
        let err = read_archive(Cursor::new(b"PK\x03\x04garbage".to_vec()), &ArchiveLimits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::DatasetArchiveInvalid);
    }
}

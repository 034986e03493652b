//! Creating qcow2 v3 overlays over a backing file (a local raw/qcow2 image
//! or an NBD/HTTP URL), and validating qcow2 headers of backing files.
//!
//! An empty overlay is four kinds of cluster (see qemu's
//! docs/interop/qcow2.txt): the header (with the backing-format extension
//! and the backing file name), a refcount table, one refcount block, and an
//! all-zero L1 table. No data cluster is allocated, so every read falls
//! through to the backing file until the guest writes.
//!
//! qcow2-rs (0.1.6) cannot create images with a backing file nor use a raw
//! one, so this writes the format directly; it is small and fixed.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const MAGIC: u32 = 0x5146_49fb; // "QFI\xfb"
const CLUSTER_BITS: u32 = 16;
const CLUSTER: u64 = 1 << CLUSTER_BITS;
/// 16-bit refcounts, qemu's default.
const REFCOUNT_ORDER: u32 = 4;
const HEADER_LEN: u32 = 104;
const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// qemu refuses backing file names longer than this.
const MAX_BACKING_NAME: usize = 1023;
/// Incompatible feature bits qemu 10 defines (dirty, corrupt, external data
/// file, compression type, extended L2); anything else we cannot vouch for.
const KNOWN_INCOMPATIBLE: u64 = 0x1f;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid qcow2 image: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("invalid overlay: {0}")]
    Invalid(String),
}

type Result<T, E = Qcow2Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackingFormat {
    Raw,
    Qcow2,
}

impl BackingFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            BackingFormat::Raw => "raw",
            BackingFormat::Qcow2 => "qcow2",
        }
    }
}

impl std::str::FromStr for BackingFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(BackingFormat::Raw),
            "qcow2" => Ok(BackingFormat::Qcow2),
            _ => Err(format!("backing format must be raw or qcow2, not {s:?}")),
        }
    }
}

/// The fields of a qcow2 header that matter to an overlay creator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Header {
    pub version: u32,
    pub cluster_bits: u32,
    pub size: u64,
    pub backing_file: Option<String>,
    pub backing_format: Option<String>,
    pub nb_snapshots: u32,
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_be_bytes(a)
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// Whether the file starts with the qcow2 magic.
pub fn is_qcow2(path: &Path) -> Result<bool> {
    let mut f = File::open(path).map_err(|source| Qcow2Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut m = [0u8; 4];
    match f.read_exact(&mut m) {
        Ok(()) => Ok(u32::from_be_bytes(m) == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(Qcow2Error::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Read and sanity-check a qcow2 header: the checks qemu makes before it
/// would trust the image, so a bad backing file is refused at creation time
/// instead of when a VM boots.
pub fn read_header(path: &Path) -> Result<Qcow2Header> {
    let io = |source| Qcow2Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let corrupt = |why: String| Qcow2Error::Corrupt {
        path: path.to_path_buf(),
        why,
    };
    let mut f = File::open(path).map_err(io)?;
    let file_len = f.metadata().map_err(io)?.len();
    let mut head = vec![0u8; CLUSTER as usize];
    let n = read_up_to(&mut f, &mut head).map_err(io)?;
    head.truncate(n);
    if head.len() < 72 {
        return Err(corrupt(format!(
            "only {} bytes, shorter than a header",
            head.len()
        )));
    }
    if be32(&head, 0) != MAGIC {
        return Err(corrupt("no qcow2 magic".into()));
    }
    let version = be32(&head, 4);
    if version != 2 && version != 3 {
        return Err(corrupt(format!("unsupported version {version}")));
    }
    let cluster_bits = be32(&head, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(corrupt(format!(
            "cluster_bits {cluster_bits} out of range 9..=21"
        )));
    }
    let cluster = 1u64 << cluster_bits;
    let size = be64(&head, 24);
    if size > (1u64 << 56) {
        return Err(corrupt(format!("virtual size {size} is absurd")));
    }
    if be32(&head, 32) != 0 {
        return Err(corrupt(
            "encrypted images are not supported as backing files".into(),
        ));
    }
    let l1_size = be32(&head, 36) as u64;
    let l1_offset = be64(&head, 40);
    let l2_entries = cluster / 8;
    let needed_l1 = size.div_ceil(cluster * l2_entries);
    if l1_size < needed_l1 {
        return Err(corrupt(format!(
            "L1 table of {l1_size} entries cannot map {size} bytes"
        )));
    }
    if !l1_offset.is_multiple_of(cluster)
        || l1_offset.saturating_add(l1_size * 8) > file_len.max(l1_offset)
    {
        return Err(corrupt(format!(
            "L1 table offset {l1_offset:#x} is invalid"
        )));
    }
    let rt_offset = be64(&head, 48);
    if rt_offset == 0 || !rt_offset.is_multiple_of(cluster) || rt_offset >= file_len {
        return Err(corrupt(format!(
            "refcount table offset {rt_offset:#x} is invalid"
        )));
    }
    let nb_snapshots = be32(&head, 60);
    let mut header_len = 72usize;
    if version == 3 {
        if head.len() < 104 {
            return Err(corrupt("v3 header is truncated".into()));
        }
        let incompatible = be64(&head, 72);
        if incompatible & !KNOWN_INCOMPATIBLE != 0 {
            return Err(corrupt(format!(
                "unknown incompatible features {incompatible:#x}"
            )));
        }
        if incompatible & 2 != 0 {
            return Err(corrupt("marked corrupt by qemu".into()));
        }
        let refcount_order = be32(&head, 96);
        if refcount_order > 6 {
            return Err(corrupt(format!(
                "refcount_order {refcount_order} out of range"
            )));
        }
        header_len = be32(&head, 100) as usize;
        if header_len < 104 || header_len > head.len() || !header_len.is_multiple_of(8) {
            return Err(corrupt(format!("header_length {header_len} is invalid")));
        }
    }
    let bf_offset = be64(&head, 8) as usize;
    let bf_len = be32(&head, 16) as usize;
    let backing_file = if bf_offset == 0 {
        None
    } else {
        if bf_len > MAX_BACKING_NAME || bf_offset + bf_len > head.len() {
            return Err(corrupt(
                "backing file name lies outside the first cluster".into(),
            ));
        }
        Some(
            String::from_utf8(head[bf_offset..bf_offset + bf_len].to_vec())
                .map_err(|_| corrupt("backing file name is not UTF-8".into()))?,
        )
    };
    // Header extensions: type, length, data padded to 8 bytes; type 0 ends.
    let mut backing_format = None;
    let mut at = header_len;
    let ext_end = if bf_offset > 0 { bf_offset } else { head.len() };
    loop {
        if at + 8 > ext_end {
            // v2 images may have no end marker before the backing name.
            break;
        }
        let (t, len) = (be32(&head, at), be32(&head, at + 4) as usize);
        if t == 0 {
            break;
        }
        let data_end = at + 8 + len;
        if data_end > ext_end {
            return Err(corrupt(format!(
                "header extension {t:#x} overruns the header"
            )));
        }
        if t == EXT_BACKING_FORMAT {
            backing_format = Some(String::from_utf8_lossy(&head[at + 8..data_end]).into_owned());
        }
        at = at + 8 + len.div_ceil(8) * 8;
    }
    Ok(Qcow2Header {
        version,
        cluster_bits,
        size,
        backing_file,
        backing_format,
        nb_snapshots,
    })
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// The bytes of an empty qcow2 v3 image of `size` bytes over `backing`.
pub fn overlay_bytes(size: u64, backing: &str, format: BackingFormat) -> Result<Vec<u8>> {
    if backing.is_empty() || backing.len() > MAX_BACKING_NAME {
        return Err(Qcow2Error::Invalid(format!(
            "backing file name must be 1..={MAX_BACKING_NAME} bytes"
        )));
    }
    if size == 0 || size > (1u64 << 50) {
        return Err(Qcow2Error::Invalid(format!(
            "virtual size {size} is out of range"
        )));
    }
    // qemu counts in 512-byte sectors and would cut a ragged tail off.
    let size = size.div_ceil(512) * 512;
    let l2_entries = CLUSTER / 8;
    let l1_size = size.div_ceil(CLUSTER * l2_entries);
    let l1_clusters = (l1_size * 8).div_ceil(CLUSTER).max(1);
    // Layout: 0 header, 1 refcount table, 2 refcount block, 3.. L1 table.
    let rt_offset = CLUSTER;
    let rb_offset = 2 * CLUSTER;
    let l1_offset = 3 * CLUSTER;
    let total_clusters = 3 + l1_clusters;
    let refs_per_block = CLUSTER * 8 / (1 << REFCOUNT_ORDER);
    if total_clusters > refs_per_block {
        return Err(Qcow2Error::Invalid(
            "virtual size too large for one refcount block".into(),
        ));
    }

    let mut img = vec![0u8; (total_clusters * CLUSTER) as usize];
    let put32 = |b: &mut [u8], at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_be_bytes());
    let put64 = |b: &mut [u8], at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_be_bytes());

    // Header extensions start right after the 104-byte v3 header.
    let fmt = format.as_str().as_bytes();
    let mut at = HEADER_LEN as usize;
    put32(&mut img, at, EXT_BACKING_FORMAT);
    put32(&mut img, at + 4, fmt.len() as u32);
    img[at + 8..at + 8 + fmt.len()].copy_from_slice(fmt);
    at += 8 + fmt.len().div_ceil(8) * 8;
    // End of extensions: type 0, length 0 (already zero bytes).
    at += 8;
    let bf_offset = at;
    img[bf_offset..bf_offset + backing.len()].copy_from_slice(backing.as_bytes());

    put32(&mut img, 0, MAGIC);
    put32(&mut img, 4, 3);
    put64(&mut img, 8, bf_offset as u64);
    put32(&mut img, 16, backing.len() as u32);
    put32(&mut img, 20, CLUSTER_BITS);
    put64(&mut img, 24, size);
    put32(&mut img, 32, 0); // no encryption
    put32(&mut img, 36, l1_size as u32);
    put64(&mut img, 40, l1_offset);
    put64(&mut img, 48, rt_offset);
    put32(&mut img, 56, 1); // refcount table clusters
    put32(&mut img, 60, 0); // snapshots
    put64(&mut img, 64, 0);
    put64(&mut img, 72, 0); // incompatible features: clean
    put64(&mut img, 80, 0);
    put64(&mut img, 88, 0);
    put32(&mut img, 96, REFCOUNT_ORDER);
    put32(&mut img, 100, HEADER_LEN);

    put64(&mut img, rt_offset as usize, rb_offset);
    for c in 0..total_clusters {
        let at = rb_offset as usize + (c as usize) * 2;
        img[at..at + 2].copy_from_slice(&1u16.to_be_bytes());
    }
    Ok(img)
}

/// What `create_overlay` was asked to put in front of.
#[derive(Debug, Clone)]
pub struct OverlaySpec {
    /// A local path, or a URL qemu understands (`nbd+unix://`, `nbd://`, `http://`).
    pub backing: String,
    pub format: Option<BackingFormat>,
    /// Virtual size; defaults to the backing file's.
    pub size: Option<u64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct OverlayInfo {
    pub path: PathBuf,
    pub backing: String,
    pub backing_format: &'static str,
    pub size: u64,
}

pub fn is_url(s: &str) -> bool {
    s.contains("://")
}

/// Work out backing name, format and size. Local paths are made absolute
/// (qemu resolves relative names against the overlay's directory, which
/// is rarely what the caller meant), and checked: a corrupt qcow2 is refused.
pub fn resolve_backing(spec: &OverlaySpec) -> Result<(String, BackingFormat, u64)> {
    if is_url(&spec.backing) {
        let size = spec.size.ok_or_else(|| {
            Qcow2Error::Invalid(format!(
                "{} is a URL: give the virtual size with --size",
                spec.backing
            ))
        })?;
        return Ok((
            spec.backing.clone(),
            spec.format.unwrap_or(BackingFormat::Raw),
            size,
        ));
    }
    let path = Path::new(&spec.backing);
    let abs = std::fs::canonicalize(path).map_err(|source| Qcow2Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let qcow = is_qcow2(&abs)?;
    let format = match (spec.format, qcow) {
        (Some(BackingFormat::Qcow2), false) => {
            return Err(Qcow2Error::Corrupt {
                path: abs,
                why: "no qcow2 magic (use --backing-format raw for a raw image)".into(),
            })
        }
        (Some(f), _) => f,
        (None, true) => BackingFormat::Qcow2,
        (None, false) => BackingFormat::Raw,
    };
    let backing_size = match format {
        BackingFormat::Qcow2 => read_header(&abs)?.size,
        BackingFormat::Raw => std::fs::metadata(&abs)
            .map_err(|source| Qcow2Error::Io {
                path: abs.clone(),
                source,
            })?
            .len(),
    };
    let name = abs
        .to_str()
        .ok_or_else(|| Qcow2Error::Invalid(format!("{} is not a UTF-8 path", abs.display())))?;
    Ok((name.to_string(), format, spec.size.unwrap_or(backing_size)))
}

/// Create `out` as an empty qcow2 overlay. Refuses to replace an existing
/// file (it may be a VM's disk); the file appears complete or not at all.
pub fn create_overlay(out: &Path, spec: &OverlaySpec) -> Result<OverlayInfo> {
    let (backing, format, size) = resolve_backing(spec)?;
    write_overlay(out, &backing, format, size)?;
    Ok(OverlayInfo {
        path: out.to_path_buf(),
        backing,
        backing_format: format.as_str(),
        size,
    })
}

/// Write an overlay whose backing is already resolved (many overlays over
/// one backing file cost one resolve).
pub fn write_overlay(out: &Path, backing: &str, format: BackingFormat, size: u64) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Qcow2Error::Io { path, source }
    };
    let bytes = overlay_bytes(size, backing, format)?;
    let name = out
        .file_name()
        .ok_or_else(|| Qcow2Error::Invalid(format!("{} is not a file name", out.display())))?;
    let tmp = out.with_file_name(format!(".{}.strato-tmp", name.to_string_lossy()));
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let written = f.write_all(&bytes).and_then(|_| f.sync_data());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(&tmp)(e));
    }
    // hard_link fails if `out` exists: never replace someone's disk.
    let linked = std::fs::hard_link(&tmp, out);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(Qcow2Error::Exists(out.to_path_buf()))
        }
        Err(e) => Err(io(out)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_header_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.qcow2");
        write_overlay(&p, "/x/base.img", BackingFormat::Raw, 10 << 20).unwrap();
        let h = read_header(&p).unwrap();
        assert_eq!(h.version, 3);
        assert_eq!(h.size, 10 << 20);
        assert_eq!(h.backing_file.as_deref(), Some("/x/base.img"));
        assert_eq!(h.backing_format.as_deref(), Some("raw"));
        assert!(matches!(
            write_overlay(&p, "/x/base.img", BackingFormat::Raw, 1 << 20),
            Err(Qcow2Error::Exists(_))
        ));
    }

    #[test]
    fn corrupt_headers_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.qcow2");
        let mut img = overlay_bytes(1 << 30, "/b", BackingFormat::Raw).unwrap();
        img[20..24].copy_from_slice(&40u32.to_be_bytes());
        std::fs::write(&p, &img).unwrap();
        assert!(matches!(read_header(&p), Err(Qcow2Error::Corrupt { .. })));
        std::fs::write(&p, b"QFI\xfb\0\0\0\x03").unwrap();
        assert!(matches!(read_header(&p), Err(Qcow2Error::Corrupt { .. })));
    }
}

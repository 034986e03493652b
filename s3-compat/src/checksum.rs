//! The `x-amz-checksum-*` algorithms S3 clients send.

use base64::Engine as _;
use sha1::Digest as _;

/// A checksum algorithm S3 accepts on uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Algorithm {
    Crc32,
    Crc32c,
    Crc64Nvme,
    Sha1,
    Sha256,
}

impl Algorithm {
    pub(crate) const ALL: [Algorithm; 5] = [
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Sha1,
        Algorithm::Sha256,
    ];

    /// The name used in `x-amz-sdk-checksum-algorithm` and in
    /// [`crate::ObjectAttrs::checksums`].
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "CRC32",
            Algorithm::Crc32c => "CRC32C",
            Algorithm::Crc64Nvme => "CRC64NVME",
            Algorithm::Sha1 => "SHA1",
            Algorithm::Sha256 => "SHA256",
        }
    }

    /// The header (or trailer) carrying the value.
    pub(crate) fn header(self) -> &'static str {
        match self {
            Algorithm::Crc32 => "x-amz-checksum-crc32",
            Algorithm::Crc32c => "x-amz-checksum-crc32c",
            Algorithm::Crc64Nvme => "x-amz-checksum-crc64nvme",
            Algorithm::Sha1 => "x-amz-checksum-sha1",
            Algorithm::Sha256 => "x-amz-checksum-sha256",
        }
    }

    pub(crate) fn from_name(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    pub(crate) fn from_header(s: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|a| a.header().eq_ignore_ascii_case(s.trim()))
    }

    pub(crate) fn hasher(self) -> Hasher {
        match self {
            Algorithm::Crc32 => Hasher::Crc(
                self,
                crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
            ),
            Algorithm::Crc32c => Hasher::Crc(
                self,
                crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi),
            ),
            Algorithm::Crc64Nvme => Hasher::Crc(
                self,
                crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme),
            ),
            Algorithm::Sha1 => Hasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
        }
    }
}

/// Incremental state of one checksum.
pub(crate) enum Hasher {
    Crc(Algorithm, crc_fast::Digest),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Crc(_, d) => d.update(data),
            Hasher::Sha1(d) => d.update(data),
            Hasher::Sha256(d) => d.update(data),
        }
    }

    /// Base64 of the big-endian digest, as S3 transmits it.
    pub(crate) fn finalize_base64(self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD;
        match self {
            Hasher::Crc(Algorithm::Crc64Nvme, d) => b64.encode(d.finalize().to_be_bytes()),
            Hasher::Crc(_, d) => {
                // 32-bit CRCs are returned in the low half of the u64.
                let v = (d.finalize() & 0xffff_ffff) as u32;
                b64.encode(v.to_be_bytes())
            }
            Hasher::Sha1(d) => b64.encode(d.finalize()),
            Hasher::Sha256(d) => b64.encode(d.finalize()),
        }
    }
}

impl Algorithm {
    /// Raw digest length in bytes.
    pub(crate) fn digest_len(self) -> usize {
        match self {
            Algorithm::Crc32 | Algorithm::Crc32c => 4,
            Algorithm::Crc64Nvme => 8,
            Algorithm::Sha1 => 20,
            Algorithm::Sha256 => 32,
        }
    }

    fn crc(self) -> Option<crc_fast::CrcAlgorithm> {
        match self {
            Algorithm::Crc32 => Some(crc_fast::CrcAlgorithm::Crc32IsoHdlc),
            Algorithm::Crc32c => Some(crc_fast::CrcAlgorithm::Crc32Iscsi),
            Algorithm::Crc64Nvme => Some(crc_fast::CrcAlgorithm::Crc64Nvme),
            Algorithm::Sha1 | Algorithm::Sha256 => None,
        }
    }

    /// Whether a multipart object can carry a FULL_OBJECT checksum of this
    /// algorithm: only CRCs, which combine without the data.
    pub(crate) fn supports_full_object(self) -> bool {
        self.crc().is_some()
    }

    /// Whether a multipart object can carry a COMPOSITE checksum of this
    /// algorithm (AWS: every algorithm but CRC64NVME).
    pub(crate) fn supports_composite(self) -> bool {
        self != Algorithm::Crc64Nvme
    }
}

/// A transmitted (base64) checksum value as raw bytes of the right length.
pub(crate) fn decode_value(a: Algorithm, b64: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()
        .filter(|b| b.len() == a.digest_len())
}

/// S3's COMPOSITE checksum of a multipart object: the algorithm over the
/// concatenated raw part checksums, base64, then `-N` for N parts.
/// `None` if a part value is malformed.
pub(crate) fn composite(a: Algorithm, parts: &[&str]) -> Option<String> {
    let mut h = a.hasher();
    for p in parts {
        h.update(&decode_value(a, p)?);
    }
    Some(format!("{}-{}", h.finalize_base64(), parts.len()))
}

/// The FULL_OBJECT CRC of a multipart object from its parts' CRCs and
/// lengths, combined arithmetically (CRC(A‖B) from CRC(A), CRC(B), |B|)
/// rather than by reading the object again. `None` for a non-CRC algorithm,
/// no parts, or a malformed part value.
pub(crate) fn combine_crcs(a: Algorithm, parts: &[(&str, u64)]) -> Option<String> {
    let crc = a.crc()?;
    let mut acc: Option<u64> = None;
    for (value, len) in parts {
        let raw = decode_value(a, value)?;
        let v = raw.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
        acc = Some(match acc {
            None => v,
            Some(prev) => crc_fast::checksum_combine(crc, prev, v, *len),
        });
    }
    let v = acc?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Some(if a == Algorithm::Crc64Nvme {
        b64.encode(v.to_be_bytes())
    } else {
        b64.encode(((v & 0xffff_ffff) as u32).to_be_bytes())
    })
}

pin_project_lite::pin_project! {
    /// Passes a body through while computing one checksum over it; when the
    /// inner stream ends cleanly the value is published in `late` (before the
    /// end is reported, so a backend that commits on end sees it). Used for
    /// parts of an upload that asked for an algorithm when the part request
    /// carried no value for it: the part is still stored with its checksum.
    pub(crate) struct Computing<S> {
        #[pin]
        inner: S,
        hasher: Option<Hasher>,
        algorithm: Algorithm,
        late: crate::backend::LateChecksums,
    }
}

impl<S> Computing<S> {
    pub(crate) fn new(inner: S, algorithm: Algorithm, late: crate::backend::LateChecksums) -> Self {
        Computing {
            inner,
            hasher: Some(algorithm.hasher()),
            algorithm,
            late,
        }
    }
}

impl<S, E> futures::Stream for Computing<S>
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>>,
{
    type Item = Result<bytes::Bytes, E>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.project();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(b))) => {
                if let Some(h) = this.hasher.as_mut() {
                    h.update(&b);
                }
                Poll::Ready(Some(Ok(b)))
            }
            Poll::Ready(Some(Err(e))) => {
                // A failed body stores nothing; publish nothing either.
                *this.hasher = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                if let Some(h) = this.hasher.take() {
                    this.late.insert(this.algorithm.name(), h.finalize_base64());
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(a: Algorithm, data: &[u8]) -> String {
        let mut h = a.hasher();
        h.update(data);
        h.finalize_base64()
    }

    #[test]
    fn known_vectors() {
        // Values as computed by the AWS SDKs for "hello world".
        assert_eq!(sum(Algorithm::Crc32, b"hello world"), "DUoRhQ==");
        assert_eq!(sum(Algorithm::Crc32c, b"hello world"), "yZRlqg==");
        assert_eq!(
            sum(Algorithm::Sha256, b"hello world"),
            "uU0nuZNNPgilLlLX2n2r+sSE7+N6U4DukIj3rOLvzek="
        );
        assert_eq!(
            sum(Algorithm::Sha1, b"hello world"),
            "Kq5sNclPz7QV2+lfQIuc6R7oRu0="
        );
        assert_eq!(sum(Algorithm::Crc64Nvme, b"hello world"), "jSnVw/bqjr4=");
    }

    #[test]
    fn full_object_crc_is_the_crc_of_the_whole() {
        let whole = b"hello world, in three uneven parts";
        let cuts = [(0, 6), (6, 7), (7, whole.len())];
        for a in [Algorithm::Crc32, Algorithm::Crc32c, Algorithm::Crc64Nvme] {
            let sums: Vec<(String, u64)> = cuts
                .iter()
                .map(|&(s, e)| (sum(a, &whole[s..e]), (e - s) as u64))
                .collect();
            let refs: Vec<(&str, u64)> = sums.iter().map(|(v, l)| (v.as_str(), *l)).collect();
            assert_eq!(combine_crcs(a, &refs), Some(sum(a, whole)), "{a:?}");
            assert_eq!(combine_crcs(a, &refs[..1]), Some(sum(a, &whole[..6])));
        }
        assert_eq!(combine_crcs(Algorithm::Sha256, &[("x", 1)]), None);
        assert_eq!(combine_crcs(Algorithm::Crc32, &[("not base64", 1)]), None);
        assert_eq!(combine_crcs(Algorithm::Crc32, &[]), None);
    }

    #[test]
    fn composite_is_a_checksum_of_checksums() {
        let p1 = sum(Algorithm::Sha256, b"part one");
        let p2 = sum(Algorithm::Sha256, b"part two");
        let mut raw = decode_value(Algorithm::Sha256, &p1).unwrap();
        raw.extend(decode_value(Algorithm::Sha256, &p2).unwrap());
        let want = format!("{}-2", sum(Algorithm::Sha256, &raw));
        assert_eq!(composite(Algorithm::Sha256, &[&p1, &p2]), Some(want));
        // A value of another algorithm's length is refused.
        assert_eq!(composite(Algorithm::Crc32, &[&p1]), None);
    }

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()), Some(a));
            assert_eq!(Algorithm::from_header(a.header()), Some(a));
        }
    }
}

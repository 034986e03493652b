//! Bodies that name chunks: hex ids, one per line (`have`, `get`, `claim`
//! requests and the `have`/`claim` answers).

use bytes::Bytes;
use strato_store::ChunkId;

/// A line that is not a chunk id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdLineError {
    #[error("ids must be hex text")]
    NotText,
    #[error("{0:?} is not a chunk id")]
    BadId(String),
}

/// `ids` as hex lines.
pub fn encode(ids: &[ChunkId]) -> Bytes {
    let mut body = String::with_capacity(ids.len() * 65);
    for id in ids {
        body.push_str(&id.to_hex());
        body.push('\n');
    }
    Bytes::from(body)
}

/// The ids of a body of hex lines; blank lines and surrounding white
/// space are ignored.
pub fn decode(data: &[u8]) -> Result<Vec<ChunkId>, IdLineError> {
    let text = std::str::from_utf8(data).map_err(|_| IdLineError::NotText)?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| l.parse().map_err(|_| IdLineError::BadId(l.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let ids = vec![ChunkId::of(b"a"), ChunkId::of(b"b")];
        assert_eq!(decode(&encode(&ids)).unwrap(), ids);
        assert_eq!(decode(b"\n  \n").unwrap(), vec![]);
        assert_eq!(decode(&[0xff]), Err(IdLineError::NotText));
        assert!(matches!(decode(b"abc\n"), Err(IdLineError::BadId(_))));
    }
}

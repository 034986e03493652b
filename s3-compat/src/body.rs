//! Request body adapters.
//!
//! [`verify_body`] turns an upload body into the [`ByteStream`] a backend
//! consumes, enforcing the declared length and the object size limit and
//! verifying `x-amz-checksum-*` values (from headers or aws-chunked trailers).
//! Every failure is yielded as an `Err` at the point it is detected — at the
//! latest at end of stream — so the backend stores nothing.
//!
//! [`ChunkCap`] sits in front of s3s's aws-chunked decoder, which buffers one
//! whole signed chunk to check its signature: it rejects a chunk header that
//! announces more than the configured cap before any of its data is read.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use http::HeaderMap;

use crate::backend::{BodyError, ByteStream, LateChecksums};
use crate::checksum::{Algorithm, Hasher};

type StdError = Box<dyn std::error::Error + Send + Sync + 'static>;
pub(crate) type RawStream = Pin<Box<dyn Stream<Item = Result<Bytes, StdError>> + Send + Sync>>;

/// First body error seen while serving a request, shared between the body
/// adapters and the handler so the handler can answer with the right code
/// whatever the backend turned the failure into.
#[derive(Debug, Clone, Default)]
pub(crate) struct BodyErrorSlot(Arc<Mutex<Option<BodyError>>>);

impl BodyErrorSlot {
    pub(crate) fn set(&self, e: BodyError) {
        let mut g = match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if g.is_none() {
            *g = Some(e);
        }
    }

    pub(crate) fn get(&self) -> Option<BodyError> {
        match self.0.lock() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}

/// Where a checksum's expected value comes from.
enum Expected {
    Header(String),
    Trailer,
}

struct Check {
    algorithm: Algorithm,
    hasher: Option<Hasher>,
    expected: Expected,
}

/// What to verify on an upload body.
pub(crate) struct BodySpec {
    pub expected_len: Option<u64>,
    pub max_len: u64,
    /// Checksums to verify, with header values when sent as headers.
    pub checksums: Vec<(Algorithm, Option<String>)>,
    /// Reads the aws-chunked trailers once the stream has ended.
    pub trailers: Option<Box<dyn Fn() -> Option<HeaderMap> + Send + Sync>>,
    pub late: LateChecksums,
    pub errors: BodyErrorSlot,
}

struct Verifier {
    inner: RawStream,
    expected_len: Option<u64>,
    max_len: u64,
    received: u64,
    checks: Vec<Check>,
    trailers: Option<Box<dyn Fn() -> Option<HeaderMap> + Send + Sync>>,
    late: LateChecksums,
    errors: BodyErrorSlot,
    done: bool,
}

/// Wraps an upload body; see the module docs.
pub(crate) fn verify_body(inner: RawStream, spec: BodySpec) -> ByteStream {
    let checks = spec
        .checksums
        .into_iter()
        .map(|(algorithm, value)| Check {
            algorithm,
            hasher: Some(algorithm.hasher()),
            expected: match value {
                Some(v) => Expected::Header(v),
                None => Expected::Trailer,
            },
        })
        .collect();
    Box::pin(Verifier {
        inner,
        expected_len: spec.expected_len,
        max_len: spec.max_len,
        received: 0,
        checks,
        trailers: spec.trailers,
        late: spec.late,
        errors: spec.errors,
        done: false,
    })
}

/// Classifies an error from s3s's body layers (signature, sha256, transport).
pub(crate) fn classify_transport(e: &StdError) -> BodyError {
    let msg = e.to_string();
    if msg.contains("SignatureMismatch") {
        BodyError::SignatureMismatch
    } else if msg.contains("Sha256Mismatch") {
        BodyError::Sha256Mismatch
    } else {
        BodyError::Transport(msg)
    }
}

impl Verifier {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Bytes, BodyError>>> {
        self.done = true;
        self.errors.set(e.clone());
        Poll::Ready(Some(Err(e)))
    }

    /// End-of-stream checks: length, then checksums.
    fn finish(&mut self) -> Result<(), BodyError> {
        if let Some(expected) = self.expected_len {
            if self.received < expected {
                return Err(BodyError::Incomplete {
                    expected,
                    received: self.received,
                });
            }
        }
        let trailers = self.trailers.as_ref().and_then(|f| f());
        for check in &mut self.checks {
            let Some(hasher) = check.hasher.take() else {
                continue;
            };
            let actual = hasher.finalize_base64();
            let expected = match &check.expected {
                Expected::Header(v) => Some(v.clone()),
                Expected::Trailer => trailers
                    .as_ref()
                    .and_then(|t| t.get(check.algorithm.header()))
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.trim().to_owned()),
            };
            match expected {
                Some(v) if v == actual => {
                    self.late.insert(check.algorithm.name(), actual);
                }
                // A declared trailer that never came: S3 rejects such uploads.
                _ => {
                    return Err(BodyError::ChecksumMismatch {
                        algorithm: check.algorithm.name().to_owned(),
                    })
                }
            }
        }
        Ok(())
    }
}

impl Stream for Verifier {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Err(e))) => {
                let e = classify_transport(&e);
                // A cap violation recorded by ChunkCap is the more precise cause.
                let e = self.errors.get().unwrap_or(e);
                self.fail(e)
            }
            Poll::Ready(Some(Ok(bytes))) => {
                self.received += bytes.len() as u64;
                if self.received > self.max_len {
                    let limit = self.max_len;
                    return self.fail(BodyError::TooLarge { limit });
                }
                if let Some(expected) = self.expected_len {
                    if self.received > expected {
                        return self.fail(BodyError::TooLong { expected });
                    }
                }
                for check in &mut self.checks {
                    if let Some(h) = check.hasher.as_mut() {
                        h.update(&bytes);
                    }
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Poll::Ready(None) => match self.finish() {
                Ok(()) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Err(e) => self.fail(e),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// Rejects aws-chunked chunks larger than a cap before s3s buffers them.
    pub(crate) struct ChunkCap<B> {
        #[pin]
        inner: B,
        limit: u64,
        state: ScanState,
        line: Vec<u8>,
        errors: BodyErrorSlot,
    }
}

#[derive(Debug, Clone, Copy)]
enum ScanState {
    Header,
    Data(u64),
    Done,
}

const MAX_CHUNK_HEADER: usize = 4096;

impl<B> ChunkCap<B> {
    pub(crate) fn new(inner: B, limit: u64, errors: BodyErrorSlot) -> Self {
        Self {
            inner,
            limit,
            state: ScanState::Header,
            line: Vec::new(),
            errors,
        }
    }
}

/// Scans `data` through the chunk framing; returns an error on a chunk that
/// is too large or a malformed header.
fn scan(
    state: &mut ScanState,
    line: &mut Vec<u8>,
    limit: u64,
    mut data: &[u8],
) -> Result<(), BodyError> {
    while !data.is_empty() {
        match *state {
            ScanState::Done => return Ok(()),
            ScanState::Data(n) => {
                let take = n.min(data.len() as u64);
                data = &data[take as usize..];
                *state = if take == n {
                    ScanState::Header
                } else {
                    ScanState::Data(n - take)
                };
            }
            ScanState::Header => {
                let (part, rest, complete) = match data.iter().position(|&b| b == b'\n') {
                    Some(i) => (&data[..=i], &data[i + 1..], true),
                    None => (data, &data[data.len()..], false),
                };
                line.extend_from_slice(part);
                data = rest;
                if line.len() > MAX_CHUNK_HEADER {
                    return Err(BodyError::Transport("aws-chunked header too long".into()));
                }
                if complete {
                    let text = String::from_utf8_lossy(line);
                    let hex = text.split([';', '\r', '\n']).next().unwrap_or("").trim();
                    let size = u64::from_str_radix(hex, 16).map_err(|_| {
                        BodyError::Transport("malformed aws-chunked chunk header".into())
                    })?;
                    line.clear();
                    if size > limit {
                        return Err(BodyError::ChunkTooLarge { size, limit });
                    }
                    *state = if size == 0 {
                        ScanState::Done
                    } else {
                        // Data is followed by CRLF.
                        ScanState::Data(size + 2)
                    };
                }
            }
        }
    }
    Ok(())
}

impl<B> http_body::Body for ChunkCap<B>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    type Data = Bytes;
    type Error = StdError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, StdError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if let Err(e) = scan(this.state, this.line, *this.limit, data) {
                        this.errors.set(e.clone());
                        *this.state = ScanState::Done;
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn raw(chunks: Vec<&'static [u8]>) -> RawStream {
        Box::pin(futures::stream::iter(
            chunks.into_iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    fn spec(expected_len: Option<u64>, checksums: Vec<(Algorithm, Option<String>)>) -> BodySpec {
        BodySpec {
            expected_len,
            max_len: 1 << 20,
            checksums,
            trailers: None,
            late: LateChecksums::default(),
            errors: BodyErrorSlot::default(),
        }
    }

    async fn drain(mut s: ByteStream) -> Result<Vec<u8>, BodyError> {
        let mut out = Vec::new();
        while let Some(b) = s.next().await {
            out.extend_from_slice(&b?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn short_body_fails_at_eof() {
        let s = verify_body(raw(vec![b"hello"]), spec(Some(10), vec![]));
        assert_eq!(
            drain(s).await,
            Err(BodyError::Incomplete {
                expected: 10,
                received: 5
            })
        );
    }

    #[tokio::test]
    async fn long_body_fails() {
        let s = verify_body(raw(vec![b"hello", b"world"]), spec(Some(6), vec![]));
        assert_eq!(drain(s).await, Err(BodyError::TooLong { expected: 6 }));
    }

    #[tokio::test]
    async fn checksum_verified_and_published() {
        let sp = spec(
            Some(11),
            vec![(Algorithm::Crc32, Some("DUoRhQ==".to_owned()))],
        );
        let late = sp.late.clone();
        let s = verify_body(raw(vec![b"hello ", b"world"]), sp);
        assert_eq!(drain(s).await.unwrap(), b"hello world");
        assert_eq!(
            late.take().get("CRC32").map(String::as_str),
            Some("DUoRhQ==")
        );
    }

    #[tokio::test]
    async fn checksum_mismatch_fails() {
        let sp = spec(
            Some(11),
            vec![(Algorithm::Crc32, Some("AAAAAA==".to_owned()))],
        );
        let s = verify_body(raw(vec![b"hello world"]), sp);
        assert!(matches!(
            drain(s).await,
            Err(BodyError::ChecksumMismatch { .. })
        ));
    }

    #[tokio::test]
    async fn missing_trailer_fails() {
        let sp = spec(Some(11), vec![(Algorithm::Crc32, None)]);
        let s = verify_body(raw(vec![b"hello world"]), sp);
        assert!(drain(s).await.is_err());
    }

    #[test]
    fn chunk_scanner() {
        let mut st = ScanState::Header;
        let mut line = Vec::new();
        let body = b"5;chunk-signature=ab\r\nhello\r\n3;chunk-signature=cd\r\nabc\r\n0;chunk-signature=ef\r\n\r\n";
        // Feed byte by byte to exercise every split point.
        for b in body {
            scan(&mut st, &mut line, 8, std::slice::from_ref(b)).unwrap();
        }
        assert!(matches!(st, ScanState::Done));

        let mut st = ScanState::Header;
        let mut line = Vec::new();
        let err = scan(&mut st, &mut line, 8, b"10;chunk-signature=ab\r\n").unwrap_err();
        assert_eq!(err, BodyError::ChunkTooLarge { size: 16, limit: 8 });
    }
}

//! Bodies sent with `Transfer-Encoding: chunked` and no length (curl, the
//! Java SDK v1 and some Go clients PUT so). SigV4 and the backend both need
//! the length up front, so such a body is read to its end first: in memory
//! while small, then in an unlinked temporary file, never past the object
//! size limit. Nothing reaches the backend unless the whole body arrived.

use std::io::SeekFrom;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use s3s::{S3Error, S3ErrorCode};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use crate::service::BoxError;

/// Bodies up to this size stay in memory.
const MEMORY_LIMIT: usize = 8 << 20;
/// Read size when the body is streamed back from its file.
const READ_BLOCK: usize = 256 << 10;

/// A whole body and its length.
pub(crate) struct Spooled {
    pub len: u64,
    pub body: s3s::Body,
}

/// Reads `body` to its end, refusing more than `max` bytes.
pub(crate) async fn spool<B>(body: B, max: u64) -> Result<Spooled, S3Error>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut body = std::pin::pin!(body);
    let mut mem = BytesMut::new();
    let mut file: Option<tokio::fs::File> = None;
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            let e: BoxError = e.into();
            S3Error::with_message(
                S3ErrorCode::IncompleteBody,
                format!("the request body ended early: {e}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        len += data.len() as u64;
        if len > max {
            return Err(S3Error::with_message(
                S3ErrorCode::EntityTooLarge,
                "Your proposed upload exceeds the maximum allowed object size.",
            ));
        }
        if let Some(f) = file.as_mut() {
            f.write_all(&data).await.map_err(spool_error)?;
        } else if mem.len() + data.len() <= MEMORY_LIMIT {
            mem.extend_from_slice(&data);
        } else {
            let std_file = tokio::task::spawn_blocking(tempfile::tempfile)
                .await
                .map_err(|e| spool_error(std::io::Error::other(e)))?
                .map_err(spool_error)?;
            let mut f = tokio::fs::File::from_std(std_file);
            f.write_all(&mem).await.map_err(spool_error)?;
            f.write_all(&data).await.map_err(spool_error)?;
            mem = BytesMut::new();
            file = Some(f);
        }
    }
    let Some(mut f) = file else {
        return Ok(Spooled {
            len,
            body: s3s::Body::from(mem.freeze()),
        });
    };
    f.flush().await.map_err(spool_error)?;
    f.seek(SeekFrom::Start(0)).await.map_err(spool_error)?;
    let blocks = futures::stream::unfold(Some(f), |f| async move {
        let mut f = f?;
        let mut buf = BytesMut::zeroed(READ_BLOCK);
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(hyper::body::Frame::data(buf.freeze())), Some(f)))
            }
            Err(e) => Some((Err(BoxError::from(e)), None)),
        }
    });
    Ok(Spooled {
        len,
        body: s3s::Body::http_body_unsync(http_body_util::StreamBody::new(blocks)),
    })
}

fn spool_error(e: std::io::Error) -> S3Error {
    tracing::error!(error = %e, "spooling a chunked request body failed");
    S3Error::with_message(
        S3ErrorCode::InternalError,
        "We encountered an internal error while buffering the request body. Please try again.",
    )
}

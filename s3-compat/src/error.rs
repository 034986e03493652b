//! S3 error codes for backend and body errors, and the error document.

use s3s::{S3Error, S3ErrorCode};

use crate::backend::{BackendError, BodyError};

fn err(code: S3ErrorCode, msg: impl Into<String>) -> S3Error {
    S3Error::with_message(code, msg.into())
}

pub(crate) fn body_error(e: &BodyError) -> S3Error {
    use S3ErrorCode as C;
    match e {
        BodyError::Incomplete { .. } => err(
            C::IncompleteBody,
            "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        ),
        BodyError::TooLong { .. } => err(
            C::InvalidRequest,
            "The request body is longer than the declared content length.",
        ),
        BodyError::TooLarge { .. } => err(
            C::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size.",
        ),
        BodyError::ChecksumMismatch { algorithm } => err(
            C::BadDigest,
            format!("The {algorithm} you specified did not match the calculated checksum."),
        ),
        BodyError::BadDigest => err(
            C::BadDigest,
            "The Content-MD5 you specified did not match what we received.",
        ),
        BodyError::ChunkTooLarge { size, limit } => err(
            C::InvalidRequest,
            format!("aws-chunked chunk of {size} bytes exceeds the limit of {limit} bytes."),
        ),
        BodyError::SignatureMismatch => err(
            C::SignatureDoesNotMatch,
            "The request signature we calculated does not match the signature you provided.",
        ),
        BodyError::Sha256Mismatch => {
            let mut e = err(
                C::Custom("XAmzContentSHA256Mismatch".into()),
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            );
            e.set_status_code(http::StatusCode::BAD_REQUEST);
            e
        }
        BodyError::Transport(m) => err(C::IncompleteBody, format!("request body failed: {m}")),
    }
}

pub(crate) fn backend_error(e: &BackendError) -> S3Error {
    use S3ErrorCode as C;
    match e {
        BackendError::NoSuchBucket => err(C::NoSuchBucket, "The specified bucket does not exist"),
        BackendError::NoSuchKey => err(C::NoSuchKey, "The specified key does not exist."),
        BackendError::NoSuchUpload => err(
            C::NoSuchUpload,
            "The specified multipart upload does not exist.",
        ),
        BackendError::BucketAlreadyExists => err(
            C::BucketAlreadyExists,
            "The requested bucket name is not available.",
        ),
        BackendError::BucketAlreadyOwnedByYou => err(
            C::BucketAlreadyOwnedByYou,
            "Your previous request to create the named bucket succeeded and you already own it.",
        ),
        BackendError::BucketNotEmpty => err(
            C::BucketNotEmpty,
            "The bucket you tried to delete is not empty",
        ),
        BackendError::PreconditionFailed => err(
            C::PreconditionFailed,
            "At least one of the pre-conditions you specified did not hold",
        ),
        BackendError::BadDigest => body_error(&BodyError::BadDigest),
        BackendError::InvalidPart => err(
            C::InvalidPart,
            "One or more of the specified parts could not be found.",
        ),
        BackendError::InvalidPartOrder => err(
            C::InvalidPartOrder,
            "The list of parts was not in ascending order.",
        ),
        BackendError::EntityTooSmall => err(
            C::EntityTooSmall,
            "Your proposed upload is smaller than the minimum allowed object size.",
        ),
        BackendError::EntityTooLarge => err(
            C::EntityTooLarge,
            "Your proposed upload exceeds the maximum allowed object size.",
        ),
        BackendError::InvalidArgument(m) => err(C::InvalidArgument, m.clone()),
        BackendError::InvalidBucketName => {
            err(C::InvalidBucketName, "The specified bucket is not valid.")
        }
        BackendError::KeyTooLong => err(C::KeyTooLongError, "Your key is too long"),
        BackendError::Body(b) => body_error(b),
        BackendError::Internal(m) => {
            tracing::error!(error = %m, "backend internal error");
            err(
                C::InternalError,
                "We encountered an internal error. Please try again.",
            )
        }
        // The client learns which backend failed, not where it is: the
        // detail (host, database) goes to the log only.
        BackendError::Unavailable { backend, message } => {
            tracing::warn!(backend = %backend, error = %message, "backend unavailable");
            err(
                C::ServiceUnavailable,
                format!("The {backend} backend is unavailable; please try again."),
            )
        }
    }
}

#[cfg(test)]
fn status_of(e: &S3Error) -> http::StatusCode {
    e.status_code()
        .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// AWS's wording for an error code, for documents that would otherwise go
/// out without a message (s3s rejects some requests before routing with an
/// empty one, and clients such as the aws CLI v1 crash on that).
pub(crate) fn default_message(code: &str, status: http::StatusCode) -> String {
    let m = match code {
        "AccessDenied" => "Access Denied",
        "BadDigest" => "The Content-MD5 or checksum you specified did not match what we received.",
        "BucketAlreadyExists" => "The requested bucket name is not available. The bucket namespace is shared by all users of the system. Please select a different name and try again.",
        "BucketNotEmpty" => "The bucket you tried to delete is not empty",
        "EntityTooLarge" => "Your proposed upload exceeds the maximum allowed object size.",
        "EntityTooSmall" => "Your proposed upload is smaller than the minimum allowed object size.",
        "IncompleteBody" => "You did not provide the number of bytes specified by the Content-Length HTTP header.",
        "InternalError" => "We encountered an internal error. Please try again.",
        "InvalidArgument" => "Invalid Argument",
        "InvalidBucketName" => "The specified bucket is not valid.",
        "InvalidDigest" => "The Content-MD5 you specified was invalid.",
        "InvalidPart" => "One or more of the specified parts could not be found. The part might not have been uploaded, or the specified entity tag might not have matched the part's entity tag.",
        "InvalidPartOrder" => "The list of parts was not in ascending order. The parts list must be specified in order by part number.",
        "InvalidRange" => "The requested range is not satisfiable",
        "InvalidRequest" => "Invalid Request",
        "KeyTooLongError" => "Your key is too long",
        "MalformedXML" => "The XML you provided was not well-formed or did not validate against our published schema.",
        "MethodNotAllowed" => "The specified method is not allowed against this resource.",
        "MissingContentLength" => "You must provide the Content-Length HTTP header.",
        "NoSuchBucket" => "The specified bucket does not exist",
        "NoSuchKey" => "The specified key does not exist.",
        "NoSuchUpload" => "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed.",
        "NotImplemented" => "A header you provided implies functionality that is not implemented",
        "PreconditionFailed" => "At least one of the pre-conditions you specified did not hold",
        "RequestTimeTooSkewed" => "The difference between the request time and the current time is too large.",
        "ServiceUnavailable" => "Service is unable to handle request.",
        "SignatureDoesNotMatch" => "The request signature we calculated does not match the signature you provided. Check your key and signing method.",
        "SlowDown" => "Please reduce your request rate.",
        _ => return status.canonical_reason().unwrap_or("Error").to_owned(),
    };
    m.to_owned()
}

/// The S3 error document.
pub(crate) fn error_xml(code: &str, message: &str, resource: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{}</Code><Message>{}</Message><Resource>{}</Resource><RequestId>{}</RequestId></Error>",
        escape(code),
        escape(message),
        escape(resource),
        escape(request_id)
    )
}

/// Pulls `Code` and `Message` out of an error document s3s produced.
pub(crate) fn parse_error_xml(body: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(body).ok()?;
    let field = |name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&close)? + start;
        Some(unescape(&text[start..end]))
    };
    Some((field("Code")?, field("Message").unwrap_or_default()))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_doc_round_trip() {
        let x = error_xml("NoSuchKey", "a <b> & c", "/b/k", "r1");
        let (c, m) = parse_error_xml(x.as_bytes()).unwrap();
        assert_eq!(c, "NoSuchKey");
        assert_eq!(m, "a <b> & c");
    }

    #[test]
    fn every_backend_error_has_a_client_or_server_status() {
        let all = [
            BackendError::NoSuchBucket,
            BackendError::NoSuchKey,
            BackendError::NoSuchUpload,
            BackendError::BucketAlreadyExists,
            BackendError::BucketAlreadyOwnedByYou,
            BackendError::BucketNotEmpty,
            BackendError::PreconditionFailed,
            BackendError::BadDigest,
            BackendError::InvalidPart,
            BackendError::InvalidPartOrder,
            BackendError::EntityTooSmall,
            BackendError::EntityTooLarge,
            BackendError::InvalidArgument("x".into()),
            BackendError::InvalidBucketName,
            BackendError::KeyTooLong,
            BackendError::Internal("x".into()),
            BackendError::Unavailable {
                backend: "postgres".into(),
                message: "x".into(),
            },
        ];
        for e in all {
            let s = status_of(&backend_error(&e));
            assert!(s.is_client_error() || s.is_server_error(), "{e:?} -> {s}");
        }
        assert_eq!(status_of(&backend_error(&BackendError::NoSuchKey)), 404);
        let down = backend_error(&BackendError::Unavailable {
            backend: "postgres".into(),
            message: "connection refused".into(),
        });
        assert_eq!(status_of(&down), 503);
        assert!(
            down.message().is_some_and(|m| m.contains("postgres")),
            "{down:?}"
        );
        let bodies = [
            BodyError::Incomplete {
                expected: 2,
                received: 1,
            },
            BodyError::TooLong { expected: 1 },
            BodyError::TooLarge { limit: 1 },
            BodyError::ChecksumMismatch {
                algorithm: "CRC32".into(),
            },
            BodyError::BadDigest,
            BodyError::ChunkTooLarge { size: 2, limit: 1 },
            BodyError::SignatureMismatch,
            BodyError::Sha256Mismatch,
            BodyError::Transport("x".into()),
        ];
        for b in bodies {
            let s = status_of(&body_error(&b));
            assert!(s.is_client_error(), "{b:?} -> {s}");
        }
        assert_eq!(
            status_of(&backend_error(&BackendError::PreconditionFailed)),
            412
        );
        assert_eq!(
            status_of(&backend_error(&BackendError::BucketNotEmpty)),
            409
        );
    }
}

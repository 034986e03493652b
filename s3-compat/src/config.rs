//! Service configuration.

use std::collections::HashSet;

/// Limits and addressing of the S3 endpoint.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// Largest object (and largest single PUT/part body) accepted, in bytes.
    pub max_object_size: u64,
    /// Largest single aws-chunked signed chunk; s3s buffers one whole chunk
    /// to verify its signature, so this bounds per-request memory.
    pub max_signed_chunk_size: u64,
    /// Longest presigned URL validity accepted (`X-Amz-Expires`), seconds.
    pub presign_max_expiry_secs: u64,
    /// Base domain for virtual-host-style addressing (`bucket.<domain>`).
    /// Path style always works.
    pub virtual_host_domain: Option<String>,
    /// Region reported by GetBucketLocation and expected in signatures.
    pub region: String,
    /// Buckets anyone may read (GET/HEAD/List) without signing.
    pub anonymous_read_buckets: HashSet<String>,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            max_object_size: 5 << 40,
            max_signed_chunk_size: 16 << 20,
            presign_max_expiry_secs: 7 * 24 * 3600,
            virtual_host_domain: None,
            region: "us-east-1".to_owned(),
            anonymous_read_buckets: HashSet::new(),
        }
    }
}

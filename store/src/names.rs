//! Validation of user-supplied names. Bucket names follow S3's rules; keys
//! are opaque byte strings to the store (they never become paths).

use super::error::{Result, StoreError};

pub const MAX_KEY_LEN: usize = 1024;

pub fn check_bucket_name(name: &str) -> Result<()> {
    let bad = |why| {
        Err(StoreError::InvalidBucketName {
            name: name.to_string(),
            why,
        })
    };
    if !(3..=63).contains(&name.len()) {
        return bad("must be 3 to 63 characters long");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return bad("may contain only lowercase letters, digits, '.' and '-'");
    }
    let first_last_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !first_last_ok(name.as_bytes()[0]) || !first_last_ok(name.as_bytes()[name.len() - 1]) {
        return bad("must begin and end with a letter or digit");
    }
    if name.contains("..") || name.contains(".-") || name.contains("-.") {
        return bad("must not contain adjacent periods or a period next to a hyphen");
    }
    if name.parse::<std::net::Ipv4Addr>().is_ok() {
        return bad("must not be formatted as an IP address");
    }
    if name.starts_with("xn--") || name.starts_with("sthree-") {
        return bad("must not start with a reserved prefix");
    }
    if name.ends_with("-s3alias") || name.ends_with("--ol-s3") {
        return bad("must not end with a reserved suffix");
    }
    Ok(())
}

pub fn check_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(StoreError::InvalidKey("keys must not be empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(StoreError::InvalidKey("keys are at most 1024 bytes"));
    }
    if key.contains('\0') {
        return Err(StoreError::InvalidKey("keys must not contain NUL"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_rules() {
        for ok in ["abc", "my-images", "v1.2.images", "a".repeat(63).as_str()] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ab",
            "ABC",
            "-abc",
            "abc-",
            "a..b",
            "a.-b",
            "192.168.1.1",
            "xn--abc",
            "under_score",
            "x-s3alias",
            "a b",
            "../etc",
            &"a".repeat(64),
        ] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn key_rules() {
        assert!(check_key("../../etc/passwd").is_ok());
        assert!(check_key("a/b/c").is_ok());
        assert!(check_key("").is_err());
        assert!(check_key("a\0b").is_err());
        assert!(check_key(&"k".repeat(1025)).is_err());
        assert!(check_key(&"k".repeat(1024)).is_ok());
    }
}

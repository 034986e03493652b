//! RFC 2047 encoded words in user metadata, as S3 treats them: values sent
//! as `=?UTF-8?B?…?=` (or `Q`) are decoded before they are stored, and
//! stored values that are not plain printable ASCII go back out encoded,
//! because an HTTP header cannot carry them as they are.

use base64::Engine as _;

/// `value` with every well-formed encoded word decoded. Whitespace between
/// two adjacent encoded words is dropped (RFC 2047 §6.2); anything that is
/// not a well-formed word in a known charset stays exactly as sent.
pub(crate) fn decode(value: &str) -> String {
    if !value.contains("=?") {
        return value.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    let mut after_word = false;
    while let Some(start) = rest.find("=?") {
        let (before, from) = rest.split_at(start);
        if let Some((text, used)) = parse_word(from) {
            let separator = after_word && before.chars().all(char::is_whitespace);
            if !separator {
                out.push_str(before);
            }
            out.push_str(&text);
            rest = &from[used..];
            after_word = true;
        } else {
            out.push_str(before);
            out.push_str("=?");
            rest = &from[2..];
            after_word = false;
        }
    }
    out.push_str(rest);
    out
}

/// One encoded word at the start of `s`: its text and its length in `s`.
fn parse_word(s: &str) -> Option<(String, usize)> {
    let body = s.strip_prefix("=?")?;
    let (charset, r) = body.split_once('?')?;
    let (encoding, r) = r.split_once('?')?;
    let end = r.find("?=")?;
    let text = &r[..end];
    let token = |t: &str| !t.is_empty() && !t.contains(|c: char| c.is_whitespace() || c == '=');
    if !token(charset) || !token(encoding) || text.contains(char::is_whitespace) {
        return None;
    }
    let bytes = match encoding {
        "B" | "b" => base64::engine::general_purpose::STANDARD
            .decode(text)
            .ok()?,
        "Q" | "q" => decode_q(text)?,
        _ => return None,
    };
    // A charset may carry a language suffix (RFC 2231): `UTF-8*en`.
    let charset = charset.split('*').next().unwrap_or("");
    let decoded = match charset.to_ascii_lowercase().as_str() {
        "utf-8" | "us-ascii" => String::from_utf8(bytes).ok()?,
        "iso-8859-1" | "latin1" => bytes.iter().map(|&b| char::from(b)).collect(),
        _ => return None,
    };
    let used = s.len() - (r.len() - end - 2);
    Some((decoded, used))
}

fn decode_q(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'_' => out.push(b' '),
            b'=' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
            }
            b => out.push(b),
        }
    }
    Some(out)
}

/// `value` as it can travel in a header: unchanged when it is printable
/// ASCII, otherwise one `=?UTF-8?B?…?=` word.
pub(crate) fn encode(value: &str) -> String {
    if value
        .bytes()
        .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
    {
        return value.to_owned();
    }
    format!(
        "=?UTF-8?B?{}?=",
        base64::engine::general_purpose::STANDARD.encode(value)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_words() {
        assert_eq!(decode("plain"), "plain");
        assert_eq!(decode("=?UTF-8?B?w6lsw6h2ZQ==?="), "élève");
        assert_eq!(decode("=?utf-8?q?caf=C3=A9_au_lait?="), "café au lait");
        assert_eq!(decode("=?ISO-8859-1?Q?h=E9?="), "hé");
        // Whitespace between words goes, around them it stays.
        assert_eq!(decode("a =?UTF-8?B?w6k=?= =?UTF-8?B?w6g=?= b"), "a éè b");
        assert_eq!(decode("x=?UTF-8?B?w6k=?=y"), "xéy");
    }

    #[test]
    fn leaves_malformed_words_alone() {
        for v in [
            "=?",
            "=?UTF-8?B?",
            "=?UTF-8?X?abc?=",
            "=?KOI8-R?B?abc?=",
            "=?UTF-8?B?!!!?=",
            "=?UTF-8?Q?=Z1?=",
            "=?UTF-8?B?/w==?=",
            "a=?b",
        ] {
            assert_eq!(decode(v), v, "{v}");
        }
        assert_eq!(decode("=?bad =?UTF-8?B?w6k=?="), "=?bad é");
    }

    #[test]
    fn encodes_only_what_needs_it() {
        assert_eq!(encode("plain value"), "plain value");
        assert_eq!(encode("élève"), "=?UTF-8?B?w6lsw6h2ZQ==?=");
        for v in ["élève", "日本語", "tab\tand\u{7f}del", "a\nb"] {
            assert_eq!(decode(&encode(v)), v);
        }
    }
}

//! Request path normalisation before routing: percent-decoding of unreserved characters,
//! optional merging of `//`, dot-segment removal (RFC 3986 §6.2.2, §5.2.4), and a choice
//! for encoded slashes, so that every spelling of a path routes — and travels upstream —
//! as the one path it means.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// An encoded slash in a request path: kept as it is (it never separates segments, and
/// reaches the upstream encoded), or refused with 400.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapedSlashes {
    #[default]
    Keep,
    Reject,
}

/// How a listener normalises request paths before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalize {
    pub merge_slashes: bool,
    pub escaped_slashes: EscapedSlashes,
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("a `%` not followed by two hex digits")]
    BadEscape,
    #[error("an encoded `/` or a `\\` (`%2F`, `%5C`, `\\`)")]
    EscapedSlash,
}

/// The normalised form of `path` (no query), borrowed when it already is normalised.
pub fn normalize(path: &str, how: Normalize) -> Result<Cow<'_, str>, PathError> {
    let bytes = path.as_bytes();
    let needs_work = bytes.iter().any(|b| *b == b'%' || *b >= 0x80)
        || (how.merge_slashes && path.contains("//"))
        || has_dot_segment(path);
    if how.escaped_slashes == EscapedSlashes::Reject && bytes.contains(&b'\\') {
        // A raw `\` is a separator to some servers: refused with its escaped form.
        return Err(PathError::EscapedSlash);
    }
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = decode_unreserved(path, how.escaped_slashes)?;
    let merged = if how.merge_slashes {
        merge_slashes(&decoded)
    } else {
        decoded
    };
    Ok(Cow::Owned(remove_dot_segments(&merged)))
}

/// Whether a segment of `path` is `.` or `..`.
pub fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// RFC 3986 §5.2.4, for an absolute path: `.` segments go, `..` removes the one before
/// (never past the root). A trailing `.` or `..` leaves the path ending in `/`.
pub fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut segments = path.split('/').peekable();
    // An absolute path starts with an empty segment before its first `/`.
    if path.starts_with('/') {
        segments.next();
    }
    let mut trailing_slash = false;
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                out.pop();
                trailing_slash = last;
            }
            s => {
                out.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut normal = String::with_capacity(path.len());
    for segment in &out {
        normal.push('/');
        normal.push_str(segment);
    }
    if trailing_slash || normal.is_empty() {
        normal.push('/');
    }
    normal
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut previous_slash = false;
    for c in path.chars() {
        if c == '/' && previous_slash {
            continue;
        }
        previous_slash = c == '/';
        out.push(c);
    }
    out
}

/// Decodes escapes of unreserved characters (`A-Z a-z 0-9 - . _ ~`, RFC 3986 §2.3) and
/// upper-cases the hex of the others, so equal paths are spelled alike.
fn decode_unreserved(path: &str, slashes: EscapedSlashes) -> Result<String, PathError> {
    let bytes = path.as_bytes();
    let mut out = String::with_capacity(path.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b >= 0x80 {
            // A raw byte of UTF-8 text: spelled as the escape it should have been.
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xF)]));
            i += 1;
            continue;
        }
        if b != b'%' {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).and_then(|h| hex(*h)),
            bytes.get(i + 2).and_then(|l| hex(*l)),
        ) else {
            return Err(PathError::BadEscape);
        };
        let decoded = hi << 4 | lo;
        if decoded.is_ascii_alphanumeric() || matches!(decoded, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(decoded));
        } else {
            if matches!(decoded, b'/' | b'\\') && slashes == EscapedSlashes::Reject {
                return Err(PathError::EscapedSlash);
            }
            out.push('%');
            out.push(char::from(HEX[usize::from(hi)]));
            out.push(char::from(HEX[usize::from(lo)]));
        }
        i += 3;
    }
    Ok(out)
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Normalize = Normalize {
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Keep,
    };

    fn norm(path: &str) -> String {
        normalize(path, DEFAULT).unwrap().into_owned()
    }

    #[test]
    fn every_spelling_of_a_path_is_the_one_path() {
        for spelling in [
            "/admin",
            "/%61dmin",
            "/%61%64%6D%69%6E",
            "//admin",
            "/x/../admin",
            "/./admin",
            "/%2e%2e/admin",
            "/x/%2E%2E/admin",
            "/a/b/../../admin",
            "/../../admin",
        ] {
            assert_eq!(norm(spelling), "/admin", "{spelling}");
        }
    }

    #[test]
    fn the_rfc_3986_examples() {
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("/mid/content=5/../6"), "/mid/6");
        assert_eq!(remove_dot_segments("/a/b/.."), "/a/");
        assert_eq!(remove_dot_segments("/a/b/."), "/a/b/");
        assert_eq!(remove_dot_segments("/.."), "/");
        assert_eq!(remove_dot_segments("/"), "/");
        assert_eq!(remove_dot_segments("/a/"), "/a/");
    }

    #[test]
    fn raw_non_ascii_is_spelled_as_its_escapes() {
        assert_eq!(norm("/café"), "/caf%C3%A9");
        assert_eq!(norm("/café"), norm("/caf%c3%a9"));
    }

    #[test]
    fn normal_paths_are_borrowed() {
        for path in ["/", "/a/b/c", "/a.b/c..d/...", "/a/b/"] {
            assert!(
                matches!(normalize(path, DEFAULT), Ok(Cow::Borrowed(_))),
                "{path}"
            );
        }
    }

    #[test]
    fn reserved_escapes_stay_escaped_in_upper_case() {
        assert_eq!(
            norm("/a%2fb"),
            "/a%2Fb",
            "an encoded slash is not a separator"
        );
        assert_eq!(norm("/a%3Fb%20c"), "/a%3Fb%20c");
        assert_eq!(norm("/caf%c3%a9"), "/caf%C3%A9");
    }

    #[test]
    fn merging_slashes_can_be_turned_off() {
        let keep = Normalize {
            merge_slashes: false,
            ..DEFAULT
        };
        assert_eq!(normalize("//a///b", keep).unwrap(), "//a///b");
        assert_eq!(normalize("//a/./b", keep).unwrap(), "//a/b");
    }

    #[test]
    fn bad_escapes_and_refused_slashes_are_errors() {
        assert_eq!(normalize("/a%zz", DEFAULT), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%2", DEFAULT), Err(PathError::BadEscape));
        let reject = Normalize {
            escaped_slashes: EscapedSlashes::Reject,
            ..DEFAULT
        };
        assert_eq!(normalize("/a%2Fb", reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a%5cb", reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a\\b", reject), Err(PathError::EscapedSlash));
        assert_eq!(normalize("/a\\b", DEFAULT).unwrap(), "/a\\b");
        assert_eq!(normalize("/a%41b", reject).unwrap(), "/aAb");
    }
}

//! How each fuzz target reads its input and what must hold of the result, shared by the
//! targets (`fuzz_targets/`) and the stable replay test (`proxy/tests/fuzz_corpus.rs`).
//! Each function returns `Ok` when the input is accepted, `Err` when it is refused, and
//! panics only when an invariant breaks.

use std::io;

use http::{HeaderValue, Request, Uri, Version};
use legate::path::{self, Normalize};
use legate::tcp::postgres::{self, First};

/// The first message of a Postgres client connection, as a client sends it.
pub fn postgres_first(data: &[u8]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    let mut reader = data;
    let first = runtime
        .block_on(postgres::read_first(&mut reader))
        .map_err(|e: io::Error| e.to_string())?;
    let raw = match &first {
        First::Cancel { raw, .. } => {
            assert_eq!(raw.len(), 16, "a CancelRequest is 16 bytes");
            raw
        }
        First::Encrypted(raw) => {
            assert_eq!(raw.len(), 8, "an SSL or GSS request is 8 bytes");
            raw
        }
        First::Startup(raw) => raw,
    };
    assert!(
        data.starts_with(raw),
        "the message is a prefix of what was sent"
    );
    Ok(())
}

/// A server's first answer to the health check's startup: its message type, then the body
/// of an ErrorResponse.
pub fn postgres_reply(data: &[u8]) -> Result<(), String> {
    let (kind, body) = data.split_first().ok_or("no answer")?;
    let _ = legate::cluster::health::postgres::error_fields(body);
    legate::cluster::health::postgres::startup_answer(*kind, body)
}

/// A request path: the first byte chooses the listener's settings (bit 0: keep `//`,
/// bit 1: refuse encoded slashes), the rest is the path.
pub fn path_normalize(data: &[u8]) -> Result<(), String> {
    let (flags, rest) = data.split_first().ok_or("empty")?;
    let how = Normalize {
        merge_slashes: flags & 1 == 0,
        escaped_slashes: if flags & 2 == 0 {
            legate::config::model::EscapedSlashes::Keep
        } else {
            legate::config::model::EscapedSlashes::Reject
        },
    };
    // What the URI parser lets through as a path: it starts with `/`.
    let text = std::str::from_utf8(rest).map_err(|e| e.to_string())?;
    let uri: Uri = format!("/{}", text.trim_start_matches('/'))
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let input = uri.path();
    let normal = path::normalize(input, how)
        .map_err(|e| e.to_string())?
        .into_owned();
    assert!(normal.starts_with('/'), "{input:?} became {normal:?}");
    assert!(
        !path::has_dot_segment(&normal),
        "{input:?} became {normal:?}"
    );
    if how.merge_slashes {
        assert!(!normal.contains("//"), "{input:?} became {normal:?}");
    }
    let again = path::normalize(&normal, how).map_err(|e| e.to_string())?;
    assert_eq!(again, normal, "normalising {input:?} twice changes it");
    assert!(
        normal.parse::<Uri>().is_ok(),
        "{normal:?} is not a valid path"
    );
    Ok(())
}

/// A request's host: the first line is the version (`1.0`, `1.1` or `2`), the second the
/// request target, every further line a Host header value.
pub fn host_check(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    let mut lines = text.split('\n');
    let version = match lines.next().unwrap_or_default() {
        "1.0" => Version::HTTP_10,
        "2" => Version::HTTP_2,
        _ => Version::HTTP_11,
    };
    let target: Uri = lines
        .next()
        .unwrap_or("/")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    let mut req = Request::new(());
    *req.version_mut() = version;
    *req.uri_mut() = target;
    for host in lines {
        let value = HeaderValue::from_str(host).map_err(|e| e.to_string())?;
        req.headers_mut().append(http::header::HOST, value);
    }
    legate::http::proxy::check_host(&mut req).map_err(|e| e.to_string())?;
    assert!(req.headers().get_all(http::header::HOST).iter().count() <= 1);
    let host = legate::http::proxy::host_of(&req);
    assert!(
        host.bytes().all(legate::http::proxy::is_host_byte),
        "{host:?} passed"
    );
    Ok(())
}

/// One file of a control plane node group's YAML.
pub fn xds_store(data: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
    legate_xds::store::merge_files(&[("group.yaml".to_owned(), text.to_owned())])
        .map(|_| ())
        .map_err(|errors| {
            assert!(!errors.is_empty(), "a refused file says why");
            format!("{errors:?}")
        })
}

/// An operator API call: the first line is the operation (`pool`, `set-weight`, …), the rest
/// its JSON body.
pub fn operator_api(data: &[u8]) -> Result<(), String> {
    let split = data.iter().position(|b| *b == b'\n').unwrap_or(data.len());
    let (operation, body) = data.split_at(split);
    let operation = std::str::from_utf8(operation).map_err(|e| e.to_string())?;
    let body = body.get(1..).unwrap_or_default();
    legate_xds::store::OperatorRequest::parse(operation, body)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

//! Body types shared by the test clients and upstreams: whole bodies, empty bodies, and
//! bodies fed frame by frame through a channel (for streaming and trailers).

use bytes::Bytes;
use http_body_util::channel::{Channel, Sender};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Any error a body may end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The one body type the harness sends, in either direction.
pub type Body = BoxBody<Bytes, BoxError>;

/// The sending half of [`channel`]: `send_data`, `send_trailers`; dropping it ends the body.
pub type BodySender = Sender<Bytes, BoxError>;

/// A body of exactly these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// A body with no bytes (and no frames).
pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

/// A body whose frames the caller produces one by one. At most `buffer` frames wait in the
/// channel, so a sender that runs ahead of its reader blocks (back-pressure, not buffering).
pub fn channel(buffer: usize) -> (BodySender, Body) {
    let (tx, body) = Channel::<Bytes, BoxError>::new(buffer);
    (tx, body.boxed())
}

//! The body type of every answer binderd gives, and its two constructors.
//! A leaf: used by `api` (answers, errors) and `proxy` (streamed bodies).

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// A boxed body: a whole buffer, nothing, or a stream relayed from a container.
pub type Body = BoxBody<Bytes, hyper::Error>;

pub fn empty() -> Body {
    Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed()
}

pub fn full(body: impl Into<Bytes>) -> Body {
    Full::new(body.into())
        .map_err(|never| match never {})
        .boxed()
}

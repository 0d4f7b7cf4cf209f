//! The pooled hyper client's connector, whose connections read with quick
//! ACKs ([`crate::tcp`]): its answers, and the upgraded connections it hands
//! over to the proxy's tunnel.

use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::tcp::QuickAck;

impl Connection for QuickAck<TcpStream> {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}

/// hyper's `HttpConnector` whose connections are [`QuickAck`]: the pooled
/// client's answers, and the upgraded connections it hands over, are read
/// with quick ACKs.
#[derive(Clone)]
pub struct QuickAckConnector(pub HttpConnector);

impl tower_service::Service<http::Uri> for QuickAckConnector {
    type Response = TokioIo<QuickAck<TcpStream>>;
    type Error = <HttpConnector as tower_service::Service<http::Uri>>::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TokioIo::new(QuickAck(io.into_inner())))
        })
    }
}

//! One kernel's WebSocket channels, in the Jupyter messaging protocol's
//! JSON form (the one every client speaks without a subprotocol): binderd
//! runs a binding's warm-up code over them.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use super::KernelError;
use crate::binder::random_secret;
use crate::tcp::QuickAck;

/// One kernel's WebSocket channels (`api/kernels/{id}/channels`), read with
/// quick ACKs ([`crate::tcp`]): the warm-up's cells do not wait
/// out the server's Nagle and our delayed ACKs either.
pub struct Channels {
    ws: tokio_tungstenite::WebSocketStream<QuickAck<tokio::net::TcpStream>>,
    session: String,
}

/// What one `execute_request` gave.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Stream output (stdout and stderr) in order.
    pub output: String,
    /// `(ename, evalue)` when the code raised.
    pub error: Option<(String, String)>,
}

impl Channels {
    /// Opens the channels of kernel `id` of the server at `addr` + `base`.
    pub async fn connect(addr: SocketAddr, base: &str, id: &str) -> Result<Channels, KernelError> {
        let session = random_secret().to_string();
        let url = format!("ws://{addr}{base}api/kernels/{id}/channels?session_id={session}");
        // Nagle off (`upstream::connect`): a frame's header and payload
        // must not wait for an ACK.
        let tcp = crate::upstream::connect(addr)
            .await
            .map_err(|e| KernelError::WebSocket(e.to_string()))?;
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, QuickAck(tcp), None)
            .await
            .map_err(|e| KernelError::WebSocket(e.to_string()))?;
        Ok(Channels { ws, session })
    }

    /// Runs `code` and waits until the kernel is idle again after it:
    /// both its `execute_reply` and its `status: idle` have come.
    pub async fn execute(&mut self, code: &str) -> Result<Outcome, KernelError> {
        let msg_id = random_secret().to_string();
        let request = execute_request(&msg_id, &self.session, code);
        self.ws
            .send(Message::text(request.to_string()))
            .await
            .map_err(|e| KernelError::WebSocket(e.to_string()))?;
        let mut outcome = Outcome::default();
        let (mut replied, mut idle) = (false, false);
        while !(replied && idle) {
            let msg = match self.ws.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | None => return Err(KernelError::Closed),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(KernelError::WebSocket(e.to_string())),
            };
            let Ok(msg) = serde_json::from_str::<Value>(&msg) else {
                continue;
            };
            if msg["parent_header"]["msg_id"].as_str() != Some(msg_id.as_str()) {
                continue;
            }
            let content = &msg["content"];
            match msg["header"]["msg_type"].as_str() {
                Some("stream") => {
                    outcome
                        .output
                        .push_str(content["text"].as_str().unwrap_or(""));
                }
                Some("execute_reply") => {
                    replied = true;
                    if content["status"].as_str() == Some("error") {
                        outcome.error = Some(error_of(content));
                    }
                }
                Some("error") if outcome.error.is_none() => {
                    outcome.error = Some(error_of(content));
                }
                Some("status") => idle |= content["execution_state"].as_str() == Some("idle"),
                _ => {}
            }
        }
        Ok(outcome)
    }

    /// Closes the channels (the kernel keeps running).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(None)).await;
    }
}

/// An `execute_request` on the shell channel, in the WebSocket JSON form
/// every client speaks (the warm-up's, and any client's that wants one).
pub fn execute_request(msg_id: &str, session: &str, code: &str) -> Value {
    json!({
        "header": {
            "msg_id": msg_id,
            "username": "binderd",
            "session": session,
            "msg_type": "execute_request",
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": false,
            "store_history": false,
            "user_expressions": {},
            "allow_stdin": false,
            "stop_on_error": true,
        },
        "channel": "shell",
        "buffers": [],
    })
}

fn error_of(content: &Value) -> (String, String) {
    let field = |k: &str| content[k].as_str().unwrap_or("").to_owned();
    (field("ename"), field("evalue"))
}

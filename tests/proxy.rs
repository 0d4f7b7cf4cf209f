//! The proxy's fast path, spoken to over raw TCP: pipelined requests, bodies
//! both ways, HEAD, chunked answers streamed as they come, kept upstream
//! connections, `Connection: close`, and the hand-over to hyper when a
//! request on the same connection is not a plain proxied one.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `write!` into a byte vector.
macro_rules! write {
    ($out:expr, $($arg:tt)*) => {
        std::io::Write::write_fmt(&mut $out, format_args!($($arg)*)).unwrap()
    };
}

/// One answer read off a raw connection.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// When each part of the body arrived (one per read).
    arrivals: Vec<(Instant, usize)>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

/// Reads more into `buf`; panics at the end of the stream.
async fn more(conn: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut chunk))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    assert!(n > 0, "the connection closed mid-answer");
    buf.extend_from_slice(&chunk[..n]);
}

/// Reads one answer (to a request of `method`) from `conn`, `buf` holding
/// what was read already; leaves in `buf` what follows it.
async fn answer(conn: &mut TcpStream, buf: &mut Vec<u8>, method: &str) -> Answer {
    let (status, headers, head_len) = loop {
        let mut h = [httparse::EMPTY_HEADER; 64];
        let mut r = httparse::Response::new(&mut h);
        if let httparse::Status::Complete(n) = r.parse(buf).unwrap() {
            let headers = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect::<Vec<_>>();
            break (r.code.unwrap(), headers, n);
        }
        more(conn, buf).await;
    };
    buf.drain(..head_len);
    let mut a = Answer {
        status,
        headers,
        body: Vec::new(),
        arrivals: Vec::new(),
    };
    if method == "HEAD" || status == 204 || status == 304 {
        return a;
    }
    if let Some(len) = a.header("content-length") {
        let len: usize = len.parse().unwrap();
        while buf.len() < len {
            more(conn, buf).await;
        }
        a.body = buf.drain(..len).collect();
        return a;
    }
    assert_eq!(a.header("transfer-encoding"), Some("chunked"), "framing");
    loop {
        let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") else {
            more(conn, buf).await;
            continue;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
        while buf.len() < line_end + 2 + size + 2 {
            more(conn, buf).await;
        }
        buf.drain(..line_end + 2);
        a.body.extend(buf.drain(..size));
        buf.drain(..2);
        if size == 0 {
            return a;
        }
        a.arrivals.push((Instant::now(), size));
    }
}

/// binderd with a stand-in pool named `binding`, and one binder handed
/// out of it: the harness and the binder's document.
async fn handed_out(test: &str, binding: &str) -> (Harness, serde_json::Value) {
    let h = Harness::with_pool(test, standin_binding(binding, 1, 2)).await;
    let made = h
        .http
        .call(
            Method::POST,
            &h.server.url(&format!("/binders/{binding}")),
            None,
        )
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let doc = made.json();
    (h, doc)
}

/// Attack: binderd's key as the second of two `Authorization` headers,
/// on the fast path and on hyper's (after an API call on the same
/// connection). The container must see neither copy of the key; the
/// other header is the container's business and passes.
#[tokio::test]
async fn a_second_authorization_header_never_carries_binderds_key_to_the_container() {
    let (
        Harness {
            data: _data,
            server,
            ..
        },
        made,
    ) = handed_out("twoauth", "twoauth").await;
    let loc = made["location"].as_str().unwrap().to_owned();
    let two = format!("Authorization: Bearer theirs\r\nAuthorization: {ADMIN}\r\n");
    let mut asks = Vec::new();
    write!(asks, "GET {loc}fast HTTP/1.1\r\nHost: t\r\n{two}\r\n");
    write!(asks, "GET /healthcheck HTTP/1.1\r\nHost: t\r\n\r\n");
    write!(asks, "GET {loc}hyper HTTP/1.1\r\nHost: t\r\n{two}\r\n");
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&asks).await.unwrap();
    let mut buf = Vec::new();
    let fast = answer(&mut conn, &mut buf, "GET").await.json();
    let health = answer(&mut conn, &mut buf, "GET").await;
    assert_eq!(health.status, 200);
    let hyper = answer(&mut conn, &mut buf, "GET").await.json();
    for (path, seen) in [("fast", &fast), ("hyper", &hyper)] {
        assert_eq!(seen["path"], format!("{loc}{path}"));
        assert!(
            !seen["headers"].to_string().contains(ADMIN),
            "binderd's key reached the container by the {path} path: {seen}"
        );
        assert!(
            seen["headers"].to_string().contains("Bearer theirs"),
            "the container's own Authorization was dropped on the {path} path: {seen}"
        );
    }
    server.stop().await;
}

/// What the container saw of `head` (a request line's target and headers,
/// sent with `Host`) by the fast path (first on a connection) and by
/// hyper's (after an API call on the same connection).
async fn seen_both_ways(addr: std::net::SocketAddr, target: &str, headers: &[u8]) -> [Value; 2] {
    let mut asks = Vec::new();
    for (n, path) in ["fast", "hyper"].iter().enumerate() {
        if n == 1 {
            write!(asks, "GET /healthcheck HTTP/1.1\r\nHost: t\r\n\r\n");
        }
        write!(asks, "GET {target}{path} HTTP/1.1\r\nHost: t\r\n");
        asks.extend_from_slice(headers);
        asks.extend_from_slice(b"\r\n");
    }
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(&asks).await.unwrap();
    let mut buf = Vec::new();
    let fast = answer(&mut conn, &mut buf, "GET").await.json();
    assert_eq!(answer(&mut conn, &mut buf, "GET").await.status, 200);
    let hyper = answer(&mut conn, &mut buf, "GET").await.json();
    [fast, hyper]
}

/// The fast path and hyper's send the container the same request: the
/// cases where they once disagreed (`proxy::onward` holds the rules), each
/// sent both ways. Attacks among them: a client naming `X-Forwarded-For`
/// in `Connection` to smuggle its own earlier value, a non-ASCII earlier
/// value, and a `Connection` value that is not UTF-8 naming a header.
#[tokio::test]
async fn both_paths_send_the_container_the_same_request() {
    let (
        Harness {
            data: _data,
            server,
            ..
        },
        made,
    ) = handed_out("onward", "onward").await;
    let loc = made["location"].as_str().unwrap().to_owned();
    let bare = loc.trim_end_matches('/');
    let cases: [(&str, &[u8], &str); 4] = [
        // `/user/{token}` with no slash (the target gets the case's
        // `fast`/`hyper` after a `?`, so the path itself has no slash).
        (&format!("{bare}?"), b"", "path /user/{token}/"),
        (
            &loc,
            b"Connection: X-Forwarded-For\r\nX-Forwarded-For: 10.9.9.9\r\n",
            "a named X-Forwarded-For dropped",
        ),
        (
            &loc,
            b"X-Forwarded-For: \xe9vil, 10.9.9.9\r\n",
            "a non-ASCII X-Forwarded-For dropped",
        ),
        (
            &loc,
            b"Connection: \xff\xfe, x-drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n",
            "a header named by a non-UTF-8 Connection dropped",
        ),
    ];
    for (target, headers, what) in cases {
        let [fast, hyper] = seen_both_ways(server.addr, target, headers).await;
        assert_eq!(fast["headers"], hyper["headers"], "{what}: headers differ");
        let in_query = target.ends_with('?');
        for (seen, how) in [(&fast, "fast"), (&hyper, "hyper")] {
            let (path, query) = if in_query {
                (format!("{bare}/"), Some(how))
            } else {
                (format!("{loc}{how}"), None)
            };
            assert_eq!(seen["path"], path, "{what}, {how} path");
            assert_eq!(seen["query"].as_str(), query, "{what}, {how} path");
        }
        let h = &fast["headers"];
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{what}: {h}");
        assert!(h.get("x-drop").is_none(), "{what}: {h}");
        if what.contains("non-UTF-8") {
            assert_eq!(h["x-keep"], "2", "{what}: {h}");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn pipelined_requests_bodies_and_the_hand_over_share_one_connection() {
    let (
        Harness {
            data: _data,
            server,
            ..
        },
        made,
    ) = handed_out("fastpath", "fast").await;
    let id = made["id"].as_str().unwrap().to_owned();
    let loc = made["location"].as_str().unwrap().to_owned();

    // Six requests in one write: four for the binder (one with a body larger
    // than any buffer), then an API call, then the binder again (hyper's).
    let upload: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let mut asks = Vec::new();
    write!(asks, "GET {loc}api/status HTTP/1.1\r\nHost: t\r\n\r\n");
    write!(
        asks,
        "POST {loc}echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        upload.len()
    );
    asks.extend_from_slice(&upload);
    write!(asks, "HEAD {loc}api/status HTTP/1.1\r\nHost: t\r\n\r\n");
    write!(
        asks,
        "GET {loc}h?q=1 HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\
         Authorization: {ADMIN}\r\nConnection: x-drop\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n"
    );
    write!(asks, "GET /healthcheck HTTP/1.1\r\nHost: t\r\n\r\n");
    write!(asks, "GET {loc}after?x=2 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(&asks).await.unwrap();
    let mut buf = Vec::new();

    let status = answer(&mut conn, &mut buf, "GET").await;
    assert_eq!(status.status, 200);
    assert_eq!(status.json()["binder"], id.as_str());
    let echo = answer(&mut conn, &mut buf, "POST").await;
    assert_eq!(echo.status, 200);
    assert_eq!(echo.body.len(), upload.len());
    assert!(echo.body == upload, "the body came back changed");
    let head = answer(&mut conn, &mut buf, "HEAD").await;
    assert_eq!(head.status, 200);
    assert!(head.header("content-length").is_some());
    let seen = answer(&mut conn, &mut buf, "GET").await.json();
    assert_eq!(seen["path"], format!("{loc}h"));
    assert_eq!(seen["query"], "q=1");
    let h = &seen["headers"];
    assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1", "{seen}");
    assert!(
        h.get("authorization").is_none(),
        "binderd's key leaked: {seen}"
    );
    assert!(h.get("x-drop").is_none(), "{seen}");
    assert!(h.get("connection").is_none(), "{seen}");
    assert_eq!(h["x-keep"], "2");
    assert_eq!(h["host"], "t");
    let health = answer(&mut conn, &mut buf, "GET").await;
    assert_eq!(health.status, 200);
    assert_eq!(health.json()["status"], "available");
    let after = answer(&mut conn, &mut buf, "GET").await;
    assert_eq!(after.json()["path"], format!("{loc}after"));
    assert_eq!(after.json()["query"], "x=2");
    assert!(buf.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn chunked_answers_stream_and_upstream_connections_are_kept() {
    let (
        Harness {
            data: _data,
            server,
            ..
        },
        made,
    ) = handed_out("fastchunks", "chunky").await;
    let loc = made["location"].as_str().unwrap().to_owned();
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    let get = |path: &str| format!("GET {loc}{path} HTTP/1.1\r\nHost: t\r\n\r\n").into_bytes();

    // Thirty requests one after another: one upstream connection serves
    // them (the stand-in counts what it accepted).
    conn.write_all(&get("api/status")).await.unwrap();
    let before = answer(&mut conn, &mut buf, "GET").await.json()["connections"]
        .as_u64()
        .unwrap();
    for _ in 0..30 {
        conn.write_all(&get("api/status")).await.unwrap();
        assert_eq!(answer(&mut conn, &mut buf, "GET").await.status, 200);
    }
    conn.write_all(&get("api/status")).await.unwrap();
    let after = answer(&mut conn, &mut buf, "GET").await.json()["connections"]
        .as_u64()
        .unwrap();
    assert!(
        after <= before + 1,
        "{} upstream connections for 31 requests",
        after - before
    );

    // A chunked answer, parts 800 ms apart: the first is relayed as soon as
    // it comes (long before the last is sent), and the connection goes on.
    let asked = Instant::now();
    conn.write_all(&get("chunks?n=3&ms=800")).await.unwrap();
    let chunks = answer(&mut conn, &mut buf, "GET").await;
    assert_eq!(chunks.status, 200);
    assert_eq!(chunks.body, b"part 0\npart 1\npart 2\n");
    let (first, _) = chunks.arrivals[0];
    let (last, _) = *chunks.arrivals.last().unwrap();
    assert!(
        last - asked >= Duration::from_millis(1600),
        "parts came early"
    );
    assert!(
        last - first >= Duration::from_millis(1000),
        "the first part waited for the rest: {:?} then {:?}",
        first - asked,
        last - asked
    );
    conn.write_all(&get("api/status")).await.unwrap();
    assert_eq!(answer(&mut conn, &mut buf, "GET").await.status, 200);

    // `Connection: close`: answered so, then closed.
    conn.write_all(
        format!("GET {loc}api/status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let last = answer(&mut conn, &mut buf, "GET").await;
    assert_eq!(last.status, 200);
    assert_eq!(last.header("connection"), Some("close"));
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut rest))
        .await
        .expect("closed after the answer")
        .unwrap();
    assert!(rest.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn websockets_tunnel_whether_first_on_a_connection_or_after_an_api_call() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (
        Harness {
            data: _data,
            server,
            ..
        },
        made,
    ) = handed_out("fastws", "ws").await;
    let loc = made["location"].as_str().unwrap().to_owned();
    let url = format!("ws://{}{loc}ws", server.addr);

    // First on its connection: the fast path's tunnel. After an API call on
    // the same connection: hyper's.
    let fresh = TcpStream::connect(server.addr).await.unwrap();
    let mut reused = TcpStream::connect(server.addr).await.unwrap();
    reused
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    assert_eq!(answer(&mut reused, &mut buf, "GET").await.status, 200);
    assert!(buf.is_empty());
    for stream in [fresh, reused] {
        let (mut ws, resp) = tokio_tungstenite::client_async(url.as_str(), stream)
            .await
            .unwrap();
        assert_eq!(resp.status(), 101);
        for i in 0..10 {
            let text = format!("message {i} {}", "x".repeat(i * 7000));
            ws.send(Message::text(text.clone())).await.unwrap();
            let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            assert_eq!(back.into_text().unwrap().as_str(), text);
        }
        ws.close(None).await.unwrap();
    }
    server.stop().await;
}

/// A server that answers each connection once, says nothing of closing,
/// and closes a moment (0–3 ms) later: every kept connection dies under
/// binderd, sometimes just as it is reused.
const ONE_ANSWER_PER_CONNECTION: &str = r#"
import random, socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
n = 0
while True:
    c, _ = s.accept()
    got = b""
    while b"\r\n\r\n" not in got:
        d = c.recv(65536)
        if not d:
            break
        got += d
    if got:
        n += 1
        body = b"served %d" % n
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(random.random() * 0.003)
    c.close()
"#;

#[tokio::test]
async fn kept_connections_the_container_closed_are_not_reused_or_are_retried() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool(
        "fastclosed",
        serde_json::json!({
            "name": "oneshot",
            "command": ["python3", "-c", ONE_ANSWER_PER_CONNECTION, "{port}"],
            "public": true,
            "pool": {"min": 1, "max": 1},
            "start_timeout_seconds": 10,
        }),
    )
    .await;
    let made = http
        .call(Method::POST, &server.url("/binders/oneshot"), None)
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let loc = made.json()["location"].as_str().unwrap().to_owned();
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    let mut last = 0;
    for i in 0..60 {
        conn.write_all(format!("GET {loc}x HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let a = answer(&mut conn, &mut buf, "GET").await;
        let body = String::from_utf8_lossy(&a.body).into_owned();
        assert_eq!(a.status, 200, "request {i}: {body}");
        let n: u64 = body.strip_prefix("served ").unwrap().parse().unwrap();
        assert!(
            n > last,
            "request {i} was answered by an old answer: {body}"
        );
        last = n;
        if i % 3 == 0 {
            // Now and then, give the close time to arrive first.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn an_upload_to_a_dead_container_gets_its_502_not_a_reset() {
    let binding = standin_binding_that_stops_answering("gone", 1500);
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool("fastdead", binding).await;
    let made = http
        .call(Method::POST, &server.url("/binders/gone"), None)
        .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let loc = made.json()["location"].as_str().unwrap().to_owned();
    let status = server.url(&format!("{loc}api/status"));
    wait_for(10, "the stand-in to exit", || async {
        (http.get(&status).await.status == 502).then_some(())
    })
    .await;

    // Python's urllib writes the whole body before it reads the answer.
    let upload = r#"
import sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], data=b"x" * (4 << 20), method="POST")
try:
    urllib.request.urlopen(req, timeout=10)
    print("no error")
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", upload, &server.url(&format!("{loc}upload"))])
        .output()
        .await
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.starts_with("502 ") && said.contains("not answering"),
        "urllib saw: {said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server.stop().await;
}

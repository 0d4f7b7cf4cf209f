//! A hostile page or client against binderd's own HTTP edge: what one
//! binder's answers may do to binderd's origin. Every binder shares
//! binderd's host, so its answer headers are confined to its own path on
//! both proxy paths (the fast path and hyper's) and on WebSocket
//! handshakes, binderd's own answers cannot be framed or sniffed, and in a
//! real browser a binder's page cannot register a service worker for the
//! whole origin nor leave a cookie binderd's pages or other binders get.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn cookies(a: &Answer) -> Vec<String> {
    a.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

/// Every cookie of `cookies` is kept to `location`: a `Path` within it, no
/// `Domain`.
fn confined(cookies: &[String], location: &str) {
    assert!(!cookies.is_empty());
    for c in cookies {
        let lower = c.to_ascii_lowercase();
        assert!(!lower.contains("domain="), "{c}");
        let paths: Vec<&str> = c
            .split(';')
            .filter_map(|a| {
                let a = a.trim();
                a.get(..5)
                    .filter(|p| p.eq_ignore_ascii_case("path="))
                    .map(|_| &a[5..])
            })
            .collect();
        assert_eq!(paths.len(), 1, "{c}");
        assert!(paths[0].starts_with(location), "{c} escapes {location}");
    }
}

/// binderd with a pool of the stand-in as `binding`, one binder handed
/// out, and its location as both proxy paths reach it: as it is (the fast
/// path) and with a doubled slash (which the fast path hands to hyper).
async fn one_binder(name: &str, binding: &str) -> (Harness, String, [String; 2]) {
    let h = Harness::with_pool(name, standin_binding(binding, 1, 3)).await;
    let (_, location) = hand_out(&h.http, &h.server.url(""), binding, None).await;
    let doubled = location.replacen("/user/", "//user/", 1);
    (h, location.clone(), [location, doubled])
}

/// A WebSocket handshake for the stand-in's echo at `loc`.
fn websocket_request(loc: &str) -> String {
    format!(
        "GET {loc}ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
}

/// The fast path (a plain request) and hyper's (the same request with a
/// doubled slash, which the fast path hands over) both drop
/// `Service-Worker-Allowed` and confine `Set-Cookie`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binders_answer_headers_stay_within_its_path_on_both_proxy_paths() {
    let (
        Harness {
            data: _data,
            server,
            http,
        },
        location,
        paths,
    ) = one_binder("hostile-headers", "evil").await;
    for loc in &paths {
        let sw = http.get(&server.url(&format!("{loc}sw.js"))).await;
        assert_eq!(sw.status, 200, "{}", sw.body);
        assert!(sw.body.contains("addEventListener"), "{}", sw.body);
        assert!(
            sw.headers.get("service-worker-allowed").is_none(),
            "{loc}: {:?}",
            sw.headers
        );
        let c = http.get(&server.url(&format!("{loc}cookie"))).await;
        assert_eq!(c.status, 200, "{}", c.body);
        let set = cookies(&c);
        assert_eq!(set.len(), 3, "{set:?}");
        confined(&set, &location);
        assert!(set.iter().any(|c| c.starts_with("evil=1")), "{set:?}");
    }
}

/// A WebSocket handshake's `Set-Cookie` is confined too, on both paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_handshake_cannot_set_a_cookie_for_the_origin() {
    let (
        Harness {
            data: _data,
            server,
            ..
        },
        location,
        paths,
    ) = one_binder("hostile-ws", "evilws").await;
    for loc in &paths {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(websocket_request(loc).as_bytes())
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut byte))
                .await
                .expect("a handshake answer")
                .unwrap();
            assert_eq!(n, 1, "closed: {}", String::from_utf8_lossy(&head));
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{loc}: {head}");
        let set: Vec<String> = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.eq_ignore_ascii_case("set-cookie"))
            .map(|(_, v)| v.trim().to_owned())
            .collect();
        assert_eq!(set.len(), 1, "{loc}: {head}");
        confined(&set, &location);
    }
}

/// binderd's own answers (routes, errors, a `/user/` address that is not a
/// binder's) cannot be framed by a binder's page or sniffed as another
/// type; the dashboard keeps its own stricter policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binderds_own_answers_refuse_frames_and_sniffing() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("hostile-guard").await;
    for path in [
        "/healthcheck",
        "/pools",
        "/nowhere",
        "/user/00000000000000000000000000000000/",
        "/bindings/nope",
    ] {
        let a = http.get(&server.url(path)).await;
        assert_eq!(
            a.headers
                .get("x-content-type-options")
                .map(|v| v.to_str().unwrap()),
            Some("nosniff"),
            "{path}: {:?}",
            a.headers
        );
        let csp = a
            .headers
            .get("content-security-policy")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{path}: {csp:?}");
    }
    let page = http
        .send(
            http::Method::GET,
            &server.url("/"),
            &[("accept", "text/html")],
            "",
        )
        .await;
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
}

/// In headless Chromium: a binder's page fetches its cookies and tries to
/// register a service worker for the whole origin. The registration is
/// refused, and binderd's dashboard and another binder's page see none of
/// its cookies. (Without chromium this fails unless BINDERD_SKIP_BROWSER=1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_page_in_a_real_browser_gets_no_hold_on_the_origin() {
    let Some(venv) = browser_venv() else { return };
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool("hostile-browser", standin_binding("page", 2, 4)).await;
    let (_, evil) = hand_out(&http, &server.url(""), "page", None).await;
    let (_, other) = hand_out(&http, &server.url(""), "page", None).await;
    let report = browser_report(
        venv,
        "hostile_browser.py",
        vec![server.url(""), evil, other],
    )
    .await;
    assert_eq!(report["service_worker"], "sw:SecurityError", "{report}");
    assert_eq!(report["dashboard_cookies"], "", "{report}");
    assert_eq!(report["other_binder_cookies"], "", "{report}");
    assert_eq!(report["dashboard_controlled"], false, "{report}");
    assert!(
        report["own_cookies"].as_str().unwrap().contains("evil=1"),
        "the page's own path still gets its cookies: {report}"
    );
}

/// Reads from `conn` until the end of the stream or `within` passes;
/// returns what came and whether the stream ended.
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, conn.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// One client holding its whole share of connections does not starve
/// another: its next connection is answered 429 at once, another address
/// is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_holding_its_share_of_connections_starves_no_one() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("hostile-conns", |c| c.max_connections_per_client = 4).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut fifth = TcpStream::connect(server.addr).await.unwrap();
    let (answer, closed) = read_until_closed(&mut fifth, Duration::from_secs(5)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert!(answer.contains("too many open connections"), "{answer}");
    assert!(closed);
    // Another address (loopback has them all) is served meanwhile.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = socket.connect(server.addr).await.unwrap();
    other
        .write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (answer, _) = read_until_closed(&mut other, Duration::from_secs(5)).await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // Closing one gives its place back.
    drop(held.pop());
    eventually(5, "a place is free again", || async {
        http.try_send(http::Method::GET, &server.url("/healthcheck"), &[], "")
            .await
            .is_ok_and(|a| a.status == 200)
    })
    .await;
}

/// A WebSocket through which nothing passes is closed after the idle
/// timeout, on both proxy paths.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_is_closed_after_its_timeout() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("hostile-idle-ws", |c| {
        c.tunnel_idle_timeout = Duration::from_secs(1)
    })
    .await;
    server_fill(&http, &server).await;
    let (_, location) = hand_out(&http, &server.url(""), "idle", None).await;
    let doubled = location.replacen("/user/", "//user/", 1);
    for loc in [location.as_str(), doubled.as_str()] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        conn.write_all(websocket_request(loc).as_bytes())
            .await
            .unwrap();
        let started = std::time::Instant::now();
        let (got, closed) = read_until_closed(&mut conn, Duration::from_secs(10)).await;
        assert!(
            String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
            "{loc}: {}",
            String::from_utf8_lossy(&got)
        );
        assert!(closed, "{loc}: the idle tunnel stayed open");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_secs(5),
            "{loc}: closed after {took:?}"
        );
    }
}

async fn server_fill(http: &Http, server: &Server) {
    create_and_fill(http, &server.url(""), &standin_binding("idle", 1, 4)).await;
}

/// A client that stops reading in the middle of a large answer is cut off
/// after the write timeout instead of holding its connection (and the
/// container's) for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_after_the_write_timeout() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("hostile-slow-reader", |c| {
        c.write_timeout = Duration::from_secs(1)
    })
    .await;
    create_and_fill(&http, &server.url(""), &standin_binding("big", 1, 4)).await;
    let (_, location) = hand_out(&http, &server.url(""), "big", None).await;
    let size = 48usize << 20;
    let put = http
        .send(
            http::Method::PUT,
            &server.url(&format!("{location}file?name=big.bin")),
            &[],
            vec![b'x'; size],
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    // The fast path, and hyper's (a doubled slash is handed over).
    let doubled = location.replacen("/user/", "//user/", 1);
    for loc in [location.as_str(), doubled.as_str()] {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let mut conn = socket.connect(server.addr).await.unwrap();
        let get = format!("GET {loc}file?name=big.bin HTTP/1.1\r\nHost: x\r\n\r\n");
        conn.write_all(get.as_bytes()).await.unwrap();
        // Read nothing for longer than the timeout, then everything there is.
        tokio::time::sleep(Duration::from_secs(4)).await;
        let (got, closed) = read_until_closed(&mut conn, Duration::from_secs(20)).await;
        assert!(closed, "{loc}: the connection was never closed");
        assert!(
            got.len() < size,
            "{loc}: the whole answer came ({} bytes): the client was not cut off",
            got.len()
        );
    }
    // binderd still answers, and the binder too.
    let s = http
        .get(&server.url(&format!("{location}api/status")))
        .await;
    assert_eq!(s.status, 200, "{}", s.body);
}

/// Cleartext HTTP/2 is refused by default (hyper's HTTP/2 has no header
/// timeout, and no browser speaks it without TLS): a prior-knowledge
/// preface gets no HTTP/2 SETTINGS frame, only an HTTP/1.1 error and a
/// close. With `http2 = true` it is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_http2_is_refused_unless_turned_on() {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let Harness {
        data: _data,
        server,
        ..
    } = Harness::start("hostile-h2c").await;
    let mut conn = TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(PREFACE).await.unwrap();
    let (got, closed) = read_until_closed(&mut conn, Duration::from_secs(5)).await;
    assert!(closed, "{}", String::from_utf8_lossy(&got));
    assert!(
        got.is_empty() || got.starts_with(b"HTTP/1.1 4") || got.starts_with(b"HTTP/1.1 5"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    let Harness {
        data: _data2,
        server: on,
        ..
    } = Harness::with_config("hostile-h2c-on", |c| c.http2 = true).await;
    let mut conn = TcpStream::connect(on.addr).await.unwrap();
    conn.write_all(PREFACE).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut head))
        .await
        .expect("a SETTINGS frame")
        .unwrap();
    assert_eq!(
        head[3], 0x4,
        "the server's first frame is SETTINGS: {head:?}"
    );
}

/// With `binder_host`, every binder has a host of its own: its location is
/// that host's URL, it answers there (both proxy paths) and nowhere else,
/// and its host serves nothing of binderd's (nor another binder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_host_per_binder_no_binder_shares_binderds_origin() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("hostile-hosts", |c| {
        c.binder_host =
            Some(binderd::config::BinderHost::parse("{token}.binders.test", "http").unwrap())
    })
    .await;
    create_and_fill(&http, &server.url(""), &standin_binding("own", 2, 4)).await;
    let (_, location) = hand_out(&http, &server.url(""), "own", None).await;
    let token = location
        .strip_prefix("http://")
        .and_then(|l| l.split('.').next())
        .unwrap()
        .to_owned();
    assert_eq!(
        location,
        format!("http://{token}.binders.test/user/{token}/")
    );
    let (_, other) = hand_out(&http, &server.url(""), "own", None).await;
    let other_token = other[7..39].to_owned();
    let host = format!("{token}.binders.test");
    let get = |path: String, host: String| {
        let http = &http;
        let url = server.url(&path);
        async move {
            http.send(http::Method::GET, &url, &[("host", host.as_str())], "")
                .await
        }
    };
    // On its own host, on both paths.
    for path in [
        format!("/user/{token}/api/status"),
        format!("//user/{token}//api/status"),
    ] {
        let a = get(path.clone(), host.clone()).await;
        assert_eq!(a.status, 200, "{path}: {}", a.body);
    }
    // Not on binderd's host (the answer names where it is).
    let main = http
        .get(&server.url(&format!("/user/{token}/api/status")))
        .await;
    assert_error(&main, 404);
    assert!(main.body.contains(&host), "{}", main.body);
    // Its host serves nothing of binderd's, nor another binder.
    assert_error(&get("/healthcheck".into(), host.clone()).await, 404);
    assert_error(&get("/bindings".into(), host.clone()).await, 404);
    let a = get(format!("/user/{other_token}/api/status"), host.clone()).await;
    assert_error(&a, 404);
    // tmpnb's answer is the absolute URL too.
    let spawned = http
        .call(http::Method::POST, &server.url("/api/spawn/"), None)
        .await;
    assert_eq!(spawned.status, 200, "{}", spawned.body);
    assert!(
        spawned.json()["url"]
            .as_str()
            .unwrap()
            .ends_with(".binders.test/user/")
            || spawned.json()["url"]
                .as_str()
                .unwrap()
                .contains(".binders.test/user/"),
        "{}",
        spawned.body
    );
}

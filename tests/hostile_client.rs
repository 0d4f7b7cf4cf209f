//! A hostile page or client against binderd's own HTTP edge: what one
//! binder's answers may do to binderd's origin. Every binder shares
//! binderd's host, so its answer headers are confined to its own path on
//! both proxy paths (the fast path and hyper's) and on WebSocket
//! handshakes, binderd's own answers cannot be framed or sniffed, and in a
//! real browser a binder's page cannot register a service worker for the
//! whole origin nor leave a cookie binderd's pages or other binders get.

mod common;

use std::process::Command;
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

/// The fast path (a plain request) and hyper's (the same request with a
/// doubled slash, which the fast path hands over) both drop
/// `Service-Worker-Allowed` and confine `Set-Cookie`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binders_answer_headers_stay_within_its_path_on_both_proxy_paths() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool("hostile-headers", standin_binding("evil", 1, 3)).await;
    let (_, location) = hand_out(&http, &server.url(""), "evil", None).await;
    let doubled = location.replacen("/user/", "//user/", 1);
    for loc in [location.as_str(), doubled.as_str()] {
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
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool("hostile-ws", standin_binding("evilws", 1, 3)).await;
    let (_, location) = hand_out(&http, &server.url(""), "evilws", None).await;
    let doubled = location.replacen("/user/", "//user/", 1);
    for loc in [location.as_str(), doubled.as_str()] {
        let mut conn = TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "GET {loc}ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        conn.write_all(req.as_bytes()).await.unwrap();
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
    if std::env::var("BINDERD_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!("skipping: BINDERD_SKIP_BROWSER=1");
        return;
    }
    let Some(venv) = venv() else { return };
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_pool("hostile-browser", standin_binding("page", 2, 4)).await;
    let (_, evil) = hand_out(&http, &server.url(""), "page", None).await;
    let (_, other) = hand_out(&http, &server.url(""), "page", None).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/hostile_browser.py");
    let base = server.url("");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv.join("bin/python"))
            .args([script, &base, &evil, &other])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["service_worker"], "sw:SecurityError", "{report}");
    assert_eq!(report["dashboard_cookies"], "", "{report}");
    assert_eq!(report["other_binder_cookies"], "", "{report}");
    assert_eq!(report["dashboard_controlled"], false, "{report}");
    assert!(
        report["own_cookies"].as_str().unwrap().contains("evil=1"),
        "the page's own path still gets its cookies: {report}"
    );
}

//! Tenancy and hardening: who may do what (a matrix over the routes), quotas,
//! rate limits, connection limits, hostile input, and secrets kept out of logs.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use binderd::auth::{ApiKey, Role};
use binderd::quota::QuotaSpec;
use common::*;
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test keys and carol's.
fn with_carol(config: &mut binderd::config::Config) {
    config
        .api_keys
        .push(ApiKey::new("carol", CAROL, Role::User));
}

fn config(data: &DataDir) -> binderd::config::Config {
    let mut config = test_config(data);
    with_carol(&mut config);
    config
}

#[tokio::test]
async fn the_auth_matrix_holds_on_every_route() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("matrix", with_carol).await;
    let mut private = standin_binding("priv", 0, 4);
    private["public"] = json!(false);
    private["administrators"] = json!(["carol"]);
    create_binding(&http, &server.url(""), &private).await;
    create_binding(&http, &server.url(""), &standin_binding("pub", 0, 4)).await;
    let who = [
        ("anonymous", None),
        ("alice", Some(ALICE)),
        ("bob", Some(BOB)),
        ("carol", Some(CAROL)),
        ("admin", Some(ADMIN)),
    ];
    let check = |route: &str, method: Method, expected: [u16; 5]| {
        let (http, url) = (&http, server.url(route));
        let route = route.to_owned();
        async move {
            for ((name, key), want) in who.iter().zip(expected) {
                let a = match method {
                    Method::POST | Method::PUT if route.starts_with("/pools") => {
                        http.send(
                            method.clone(),
                            &url,
                            &key.map(|k| {
                                vec![("authorization", k), ("content-type", "application/json")]
                            })
                            .unwrap_or_default(),
                            r#"{"minPool": 0}"#,
                        )
                        .await
                    }
                    _ => http.call(method.clone(), &url, *key).await,
                };
                assert_eq!(a.status, want, "{method} {route} as {name}: {}", a.body);
            }
        }
    };
    //                                          anon alice bob carol admin
    check("/bindings/priv", Method::GET, [404, 404, 404, 200, 200]).await;
    check("/bindings/pub", Method::GET, [200, 200, 200, 200, 200]).await;
    check("/pools/priv", Method::GET, [404, 404, 404, 200, 200]).await;
    check("/pools/priv", Method::POST, [401, 404, 404, 200, 200]).await;
    check("/pools/pub", Method::PUT, [401, 403, 403, 403, 200]).await;
    check("/quota", Method::GET, [401, 200, 200, 200, 200]).await;
    check("/binders/priv", Method::GET, [401, 404, 404, 200, 200]).await;
    check("/bindings/priv", Method::DELETE, [401, 404, 404, 403, 202]).await;

    // Binders: the spawner owns it; anyone with the id may read it.
    let spawned = http
        .call(Method::POST, &server.url("/binders/pub"), Some(ALICE))
        .await;
    assert_eq!(spawned.status, 202, "{}", spawned.body);
    let id = spawned.json()["id"].as_str().unwrap().to_owned();
    check(
        &format!("/binders/pub/{id}"),
        Method::GET,
        [200, 200, 200, 200, 200],
    )
    .await;
    check(
        &format!("/binders/pub/{id}/logs"),
        Method::GET,
        [401, 200, 403, 403, 200],
    )
    .await;
    let listed = |key| {
        let (http, url) = (&http, server.url("/binders/pub"));
        async move {
            http.call(Method::GET, &url, Some(key))
                .await
                .json()
                .as_array()
                .unwrap()
                .len()
        }
    };
    assert_eq!(listed(ALICE).await, 1);
    let mine = http
        .call(Method::GET, &server.url("/binders/pub"), Some(ALICE))
        .await
        .json();
    assert_eq!(mine[0]["owner"], "alice", "{mine}");
    let by_id = http
        .get(&server.url(&format!("/binders/pub/{id}")))
        .await
        .json();
    assert!(
        by_id.get("owner").is_none(),
        "the owner is not for anyone with the id: {by_id}"
    );
    assert_eq!(listed(BOB).await, 0);
    assert_eq!(listed(ADMIN).await, 1);
    check(
        &format!("/binders/pub/{id}"),
        Method::DELETE,
        [401, 202, 403, 403, 202],
    )
    .await;

    // An anonymous binder is given back by whoever holds its id (a page
    // releasing it when its reader leaves); a bad id is still a 404.
    let anon = http
        .call(Method::POST, &server.url("/binders/pub"), None)
        .await;
    assert_eq!(anon.status, 202, "{}", anon.body);
    let anon_id = anon.json()["id"].as_str().unwrap().to_owned();
    let gone = http
        .call(
            Method::DELETE,
            &server.url(&format!("/binders/pub/{anon_id}")),
            None,
        )
        .await;
    assert_eq!(gone.status, 202, "{}", gone.body);
    assert_error(
        &http
            .call(
                Method::DELETE,
                &server.url(&format!("/binders/pub/{}", "0".repeat(32))),
                None,
            )
            .await,
        404,
    );

    // A wrong key is 401 everywhere, public routes included.
    for route in ["/healthcheck", "/bindings", "/pools", "/api/stats"] {
        assert_error(
            &http
                .call(Method::GET, &server.url(route), Some("not-a-key"))
                .await,
            401,
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn quotas_limit_live_binders_and_memory_and_report_usage() {
    let data = DataDir::new("quota");
    let mut config = config(&data);
    config.quotas = HashMap::from([(
        "alice".to_string(),
        QuotaSpec {
            binders: Some(2),
            memory: Some("100Mi".into()),
            cpu: None,
        },
    )]);
    let server = Server::start(config).await;
    let http = Http::new();
    let mut small = standin_binding("small", 0, 10);
    small["resources"] = json!({"memory": "40Mi"});
    create_binding(&http, &server.url(""), &small).await;
    let mut big = standin_binding("big", 0, 10);
    big["resources"] = json!({"memory": "80Mi"});
    create_binding(&http, &server.url(""), &big).await;

    let spawn = |name: &'static str, key: &'static str| {
        let (http, url) = (&http, server.url(&format!("/binders/{name}")));
        async move { http.call(Method::POST, &url, Some(key)).await }
    };
    let first = spawn("small", ALICE).await;
    assert_eq!(first.status, 202, "{}", first.body);
    let over_memory = spawn("big", ALICE).await;
    assert_error(&over_memory, 403);
    assert!(over_memory.body.contains("memory"), "{}", over_memory.body);
    assert_eq!(spawn("small", ALICE).await.status, 202);
    let over_count = spawn("small", ALICE).await;
    assert_error(&over_count, 403);
    assert!(
        over_count.body.contains("live binders"),
        "{}",
        over_count.body
    );
    // Others are not limited by alice's quota.
    assert_eq!(spawn("big", BOB).await.status, 202);

    let q = http
        .call(Method::GET, &server.url("/quota"), Some(ALICE))
        .await
        .json();
    assert_eq!(q["spec"]["binders"], 2);
    assert_eq!(q["usage"]["binders"], 2);
    assert_eq!(q["usage"]["memory"], 80 << 20);

    // Stopping one gives its share back.
    let id = first.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        http.call(
            Method::DELETE,
            &server.url(&format!("/binders/small/{id}")),
            Some(ALICE)
        )
        .await
        .status,
        202
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while http
        .call(Method::GET, &server.url("/quota"), Some(ALICE))
        .await
        .json()["usage"]["binders"]
        != 1
    {
        assert!(tokio::time::Instant::now() < deadline, "quota not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(spawn("small", ALICE).await.status, 202);
    server.stop().await;
}

/// A key's quota is checked against the chosen profile's size: the small
/// profile fits where the large one of the same binding does not.
#[tokio::test]
async fn a_quota_is_checked_against_the_chosen_profiles_size() {
    let data = DataDir::new("quota-profile");
    let mut config = config(&data);
    config.quotas = HashMap::from([(
        "alice".to_string(),
        QuotaSpec {
            binders: Some(5),
            memory: Some("100Mi".into()),
            cpu: None,
        },
    )]);
    let server = Server::start(config).await;
    let http = Http::new();
    let mut binding = standin_binding("sized", 0, 10);
    binding["resources"] = json!({"memory": "40Mi"});
    binding["profiles"] = json!([
        {"name": "small"},
        {"name": "large", "resources": {"memory": "80Mi"}},
    ]);
    create_binding(&http, &server.url(""), &binding).await;
    let spawn = |query: &'static str| {
        let (http, url) = (&http, server.url(&format!("/binders/sized{query}")));
        async move { http.call(Method::POST, &url, Some(ALICE)).await }
    };
    assert_eq!(spawn("?profile=small").await.status, 202);
    let over = spawn("?profile=large").await;
    assert_error(&over, 403);
    assert!(over.body.contains("memory"), "{}", over.body);
    assert_eq!(spawn("").await.status, 202, "the default is small");
    let q = http
        .call(Method::GET, &server.url("/quota"), Some(ALICE))
        .await
        .json();
    assert_eq!(q["usage"]["memory"], 80 << 20, "{q}");
    // Bob has no quota: the large profile is his to take.
    let a = http
        .call(
            Method::POST,
            &server.url("/binders/sized?profile=large"),
            Some(BOB),
        )
        .await;
    assert_eq!(a.status, 202, "{}", a.body);
    server.stop().await;
}

#[tokio::test]
async fn anonymous_spawns_are_rate_limited_per_client_with_retry_after() {
    let data = DataDir::new("rate");
    let mut config = config(&data);
    config.rate_limit.anonymous_per_minute = 3;
    config.rate_limit.anonymous_burst = 3;
    config.rate_limit.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let server = Server::start(config).await;
    let http = Http::new();
    create_binding(&http, &server.url(""), &standin_binding("rl", 0, 50)).await;
    let spawn = |xff: &'static str| {
        let (http, url) = (&http, server.url("/binders/rl"));
        async move {
            http.send(Method::POST, &url, &[("x-forwarded-for", xff)], "")
                .await
        }
    };
    for _ in 0..3 {
        assert_eq!(spawn("203.0.113.1").await.status, 202);
    }
    let limited = spawn("203.0.113.1").await;
    assert_error(&limited, 429);
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    // Another client (behind the trusted proxy) has its own allowance.
    assert_eq!(spawn("203.0.113.2").await.status, 202);
    // Keys are not limited by the anonymous limit; health and stats never are.
    assert_eq!(
        http.call(Method::POST, &server.url("/binders/rl"), Some(ALICE))
            .await
            .status,
        202
    );
    for _ in 0..20 {
        assert_eq!(http.get(&server.url("/healthcheck")).await.status, 200);
        assert_eq!(http.get(&server.url("/api/stats")).await.status, 200);
    }
    // The tmpnb route shares the same allowance.
    let tmpnb = http
        .send(
            Method::POST,
            &server.url("/api/spawn/"),
            &[("x-forwarded-for", "203.0.113.1")],
            "",
        )
        .await;
    assert_error(&tmpnb, 429);
    server.stop().await;
}

#[tokio::test]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    let data = DataDir::new("limits");
    let mut config = config(&data);
    config.header_read_timeout = Duration::from_secs(1);
    config.max_connections = 2;
    let server = Server::start(config).await;

    // Slow-loris: half a request line, then nothing.
    let mut slow = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a slow client");
    drop(slow);

    // Two open connections use the cap; a third waits until one closes.
    let mut a = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let ask = b"GET /healthcheck HTTP/1.1\r\nHost: x\r\n\r\n";
    a.write_all(ask).await.unwrap();
    let mut first = [0u8; 12];
    a.read_exact(&mut first).await.unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    let mut b = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    b.write_all(ask).await.unwrap();
    b.read_exact(&mut first).await.unwrap();
    let mut c = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    c.write_all(ask).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), c.read_exact(&mut first)).await;
    assert!(
        waited.is_err(),
        "a third connection was served past the cap"
    );
    drop(a);
    tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut first))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    drop((b, c));
    server.stop().await;
}

#[tokio::test]
async fn hostile_input_gets_clear_errors_never_a_5xx() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("hostile", with_carol).await;
    let long = "a".repeat(10_000);
    let odd_names = [
        "..",
        "a%2Fb",
        "%2E%2E",
        "a%00b",
        "%C3%A9t%C3%A9",
        "-x",
        long.as_str(),
        "a..b/../../etc",
    ];
    for name in odd_names {
        for route in [
            format!("/bindings/{name}"),
            format!("/binders/{name}"),
            format!("/pools/{name}"),
        ] {
            let a = http.get(&server.url(&route)).await;
            assert!(
                matches!(a.status, 400 | 401 | 404),
                "{route}: {} {}",
                a.status,
                a.body
            );
            assert_error(&a, a.status);
        }
    }
    let post = |body: &'static str, ct: &'static str| {
        let (http, url) = (&http, server.url("/bindings"));
        async move {
            http.send(
                Method::POST,
                &url,
                &[("authorization", ADMIN), ("content-type", ct)],
                body,
            )
            .await
        }
    };
    // Duplicate keys, wrong types, huge numbers, wrong content types.
    assert_error(
        &post(
            r#"{"name":"d","name":"e","command":["x"]}"#,
            "application/json",
        )
        .await,
        400,
    );
    assert_error(
        &post(r#"{"name":"d","command":"x"}"#, "application/json").await,
        400,
    );
    assert_error(
        &post(
            r#"{"name":"d","command":["x"],"pool":{"max":18446744073709551616}}"#,
            "application/json",
        )
        .await,
        400,
    );
    assert_error(
        &post(
            r#"{"name":"d","command":["x"],"pool":{"max":4294967295}}"#,
            "application/json",
        )
        .await,
        400,
    );
    assert_error(&post(r#"[1,2,3]"#, "application/json").await, 400);
    assert_error(
        &post(
            r#"{"name":"d","command":["x"]}"#,
            "application/x-www-form-urlencoded",
        )
        .await,
        415,
    );
    assert_error(&post("\u{0}\u{1}", "application/json").await, 400);
    // Tokens of every wrong shape on /user/.
    for token in [
        "",
        "x",
        "..",
        "%00",
        &"A".repeat(32),
        &"0".repeat(31),
        &"0".repeat(33),
        &"g".repeat(32),
        &"0".repeat(5000),
    ] {
        let a = http.get(&server.url(&format!("/user/{token}/api"))).await;
        assert_eq!(a.status, 404, "{token}: {}", a.body);
    }
    // Methods binderd does not know.
    let a = http
        .call(
            Method::from_bytes(b"BREW").unwrap(),
            &server.url("/bindings"),
            None,
        )
        .await;
    assert_error(&a, 405);
    assert_eq!(
        http.get(&server.url("/healthcheck")).await.status,
        200,
        "still alive"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_spawns_is_answered_with_bounded_memory_and_no_key_in_the_log() {
    let data = DataDir::new("flood");
    let http = Http::new();
    let p = Process::spawn(&data, &[], &[]);
    let mut body = standin_binding("flood", 0, 1);
    // Never answers: the one allowed container stays starting.
    body["command"] = json!(["sleep", "600"]);
    assert_eq!(
        http.post_json(&p.url("/bindings"), Some(ADMIN), &body)
            .await
            .status,
        201
    );
    // Warm up, then measure.
    for _ in 0..200 {
        http.call(Method::POST, &p.url("/binders/flood"), Some(ALICE))
            .await;
    }
    let before = rss_kib(p.child.id());
    let mut tasks = Vec::new();
    for worker in 0..64 {
        let url = p.url("/binders/flood");
        tasks.push(tokio::spawn(async move {
            let http = Http::new();
            let mut counts: HashMap<u16, usize> = HashMap::new();
            for i in 0..(10_000 / 64 + 1) {
                // Half anonymous (rate limited), half with a key (full pool).
                let key = (i + worker) % 2 == 0;
                let a = http.call(Method::POST, &url, key.then_some(ALICE)).await;
                *counts.entry(a.status).or_default() += 1;
            }
            counts
        }));
    }
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let after = rss_kib(p.child.id());
    let total: usize = counts.values().sum();
    assert!(total >= 10_000, "{counts:?}");
    for status in counts.keys() {
        assert!(
            matches!(status, 429 | 503),
            "unexpected {status}: {counts:?}"
        );
    }
    assert!(
        counts.contains_key(&429) && counts.contains_key(&503),
        "{counts:?}"
    );
    assert!(
        after < before + 32 * 1024,
        "memory grew from {before} KiB to {after} KiB"
    );
    assert_eq!(http.get(&p.url("/healthcheck")).await.status, 200);
    drop(p);
    // Keys never reach the log.
    let logs: String = std::fs::read_dir(&data.0)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(logs.contains("listening on"), "no log read");
    assert!(
        !logs.contains(ADMIN) && !logs.contains(ALICE),
        "a key is in the log"
    );
}

/// Python's `urllib` writes the whole body before it reads the answer: an
/// over-limit body must still get the 413 (not a broken pipe), every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_body_is_answered_413_to_a_client_that_writes_it_all_first() {
    let data = DataDir::new("linger");
    let server = Server::start(config(&data)).await;
    let script = r#"
import sys, urllib.request, urllib.error
url, key = sys.argv[1], sys.argv[2]
seen = []
for _ in range(20):
    req = urllib.request.Request(url, data=b"x" * (2 << 20), method="POST",
        headers={"Authorization": key, "Content-Type": "application/json"})
    try:
        urllib.request.urlopen(req, timeout=10)
        seen.append("2xx")
    except urllib.error.HTTPError as e:
        seen.append(str(e.code) if b'"code":413' in e.read() else "bad-body")
    except OSError as e:
        seen.append(type(e).__name__)
print(" ".join(seen))
"#;
    let url = server.url("/bindings");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", script, &url, ADMIN])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let seen = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        seen,
        vec!["413"; 20].join(" "),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A body that never ends holds the connection for a bounded time only,
    // and the server keeps answering meanwhile.
    let mut endless = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    endless
        .write_all(
            format!(
                "POST /bindings HTTP/1.1\r\nHost: x\r\nAuthorization: {ADMIN}\r\n\
                 Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let chunk = format!("{:x}\r\n{}\r\n", 64 << 10, "x".repeat(64 << 10));
    let started = std::time::Instant::now();
    let mut answer = Vec::new();
    let (mut rd, mut wr) = endless.into_split();
    let writer = tokio::spawn(async move {
        while wr.write_all(chunk.as_bytes()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let read = tokio::time::timeout(Duration::from_secs(20), rd.read_to_end(&mut answer)).await;
    writer.abort();
    assert!(read.is_ok(), "an endless body held the connection");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    let http = Http::new();
    assert_eq!(http.get(&server.url("/healthcheck")).await.status, 200);
    server.stop().await;
}

/// Anonymous binders held at once are capped per client (an IPv4
/// address; an IPv6 address by its /64, so a host cannot step through its
/// 2^64 addresses) and in all: over a cap is 429 naming it, with
/// `Retry-After`; a binder given back frees its place; keys are not
/// counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_binders_held_at_once_are_capped_per_client_and_per_64() {
    let data = DataDir::new("anon-caps");
    let mut config = config(&data);
    config.rate_limit.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config.rate_limit.anonymous_concurrent = 2;
    config.rate_limit.anonymous_total = 4;
    let server = Server::start(config).await;
    let http = Http::new();
    create_and_fill(&http, &server.url(""), &standin_binding("capped", 4, 50)).await;
    let spawn = |xff: &'static str| {
        let (http, url) = (&http, server.url("/binders/capped"));
        async move {
            http.send(Method::POST, &url, &[("x-forwarded-for", xff)], "")
                .await
        }
    };
    let first = spawn("203.0.113.7").await;
    assert!(matches!(first.status, 201 | 202), "{}", first.body);
    assert!(matches!(spawn("203.0.113.7").await.status, 201 | 202));
    let over = spawn("203.0.113.7").await;
    assert_error(&over, 429);
    assert!(over.body.contains("anonymous binders"), "{}", over.body);
    assert!(over.headers.contains_key("retry-after"));
    // tmpnb's route counts the same binders.
    let tmpnb = http
        .send(
            Method::POST,
            &server.url("/api/spawn/"),
            &[("x-forwarded-for", "203.0.113.7")],
            "",
        )
        .await;
    assert_error(&tmpnb, 429);
    // Giving one back frees its place.
    let id = first.json()["id"].as_str().unwrap().to_owned();
    let stop = http
        .call(
            Method::DELETE,
            &server.url(&format!("/binders/capped/{id}")),
            None,
        )
        .await;
    assert_eq!(stop.status, 202, "{}", stop.body);
    eventually(10, "the stopped binder's place is free", || async {
        matches!(spawn("203.0.113.7").await.status, 201 | 202)
    })
    .await;
    // Two addresses of one IPv6 /64 are one client; another /64 is not.
    assert!(matches!(spawn("2001:db8:7:1::1").await.status, 201 | 202));
    assert!(matches!(
        spawn("2001:db8:7:1:ffff::2").await.status,
        201 | 202
    ));
    assert_error(&spawn("2001:db8:7:1:abcd::3").await, 429);
    // Four anonymous binders in all now: the total cap holds for a newcomer.
    let total = spawn("198.51.100.1").await;
    assert_error(&total, 429);
    assert!(total.body.contains("try again later"), "{}", total.body);
    // A key's binders are its quota's business, not the anonymous caps'.
    let keyed = http
        .call(Method::POST, &server.url("/binders/capped"), Some(ALICE))
        .await;
    assert!(matches!(keyed.status, 201 | 202), "{}", keyed.body);
    server.stop().await;
}

/// A classroom behind one NAT address: 100 anonymous readers click at once
/// and, with the default limits, all get a binder from a pool that holds
/// them; none is handed out twice. (Before, the default burst let 20 in.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classroom_behind_one_address_is_served_with_the_default_limits() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::with_config("classroom", |c| {
        c.rate_limit = binderd::config::RateLimitConfig::default();
        c.start_concurrency = 32;
    })
    .await;
    create_and_fill(&http, &server.url(""), &standin_binding("class", 100, 100)).await;
    let url = server.url("/binders/class");
    let answers =
        futures_util::future::join_all((0..100).map(|_| http.call(Method::POST, &url, None))).await;
    let mut ids = std::collections::HashSet::new();
    for a in &answers {
        assert_eq!(a.status, 201, "{}", a.body);
        assert!(ids.insert(a.json()["id"].as_str().unwrap().to_owned()));
    }
    assert_eq!(ids.len(), 100);
    server.stop().await;
}

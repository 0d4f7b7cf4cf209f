//! The dashboard in a real headless Chromium (Debian's chromium and
//! chromium-driver, which `.ci/run` installs), driven by selenium from the
//! test venv (tests/dashboard_browser.py): it loads with no console errors,
//! shows a pool's counts, follows a handout made by another client (in the
//! table and in the pool's last-hour charts), refuses
//! a resize without a key with a visible message, and resizes with the
//! admin key (checked through the API). Also: the page and its files come
//! with a strict Content-Security-Policy, and JSON clients of `/` are
//! answered as before. Without chromium these tests fail unless
//! BINDERD_SKIP_BROWSER=1.

mod common;

use common::*;
use http::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_a_real_browser() {
    let Some(venv) = browser_venv() else { return };
    let Harness { data, server, http } =
        Harness::with_pool("dashboard", standin_binding("dash", 2, 6)).await;
    let mut profiled = standin_binding("dashp", 1, 6);
    profiled["profiles"] = serde_json::json!([
        {"name": "small"},
        {"name": "large", "pool": {"min": 2, "max": 6}},
    ]);
    create_binding(&http, &server.url(""), &profiled).await;
    let base = server.url("");
    let shot = data.0.join("dashboard.png");
    let args = vec![base, ADMIN.to_owned(), shot.to_str().unwrap().to_owned()];
    let report = browser_report(venv, "dashboard_browser.py", args).await;
    assert_eq!(report["title"], "binderd", "{report}");
    assert!(
        report["refused"].as_str().unwrap().contains("401")
            || report["refused"].as_str().unwrap().contains("key"),
        "{report}"
    );
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 10_000,
        "no screenshot"
    );
    // The handout another client made shows in the pool's chart.
    assert!(report["trend_last"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["trend_bars"].as_u64().unwrap() >= 1, "{report}");
    assert!(report["trend_lines"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["trend_caption"]
            .as_str()
            .unwrap()
            .contains("handouts/min"),
        "{report}"
    );
    let pool = http.get(&server.url("/pools/dash")).await.json();
    assert_eq!(pool["minPool"], 3, "{pool}");
    // A row per profile, each resized on its own (the default's untouched).
    assert_eq!(
        report["profile_rows"],
        serde_json::json!(["dashp · large", "dashp · small"]),
        "{report}"
    );
    assert_eq!(
        report["typed_kept"], "5",
        "typed values survive the refresh"
    );
    assert_eq!(
        report["profile_mins"],
        serde_json::json!({"small": 1, "large": 3}),
        "{report}"
    );
    server.stop().await;
}

#[tokio::test]
async fn the_page_is_for_browsers_and_locked_down() {
    let Harness {
        data: _data,
        server,
        http,
    } = Harness::start("dashboard-csp").await;
    let page = http
        .send(
            Method::GET,
            &server.url("/"),
            &[("accept", "text/html")],
            "",
        )
        .await;
    assert_eq!(page.status, 200);
    assert!(page.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(
        !page.body.contains("<script>") && !page.body.contains("style="),
        "inline code"
    );
    for (file, kind) in [("/dashboard.js", "javascript"), ("/dashboard.css", "css")] {
        let a = http.get(&server.url(file)).await;
        assert_eq!(a.status, 200);
        assert!(a.headers["content-type"].to_str().unwrap().contains(kind));
    }
    // JSON clients of `/` are answered as before.
    let root = http.get(&server.url("/")).await.json();
    assert_eq!(root["name"], "binderd");
    server.stop().await;
}

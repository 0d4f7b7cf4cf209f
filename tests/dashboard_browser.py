"""The dashboard in a real headless Chromium (Debian's chromium and
chromium-driver, driven by selenium), against a running binderd with a
binding `dash` (minPool 2) and the admin key given on the command line.

    python dashboard_browser.py http://127.0.0.1:PORT ADMIN_KEY [SCREENSHOT.png]

Prints a JSON report; exits non-zero on the first check that fails.
"""

import json
import sys
import time
import urllib.request

from selenium.webdriver.common.by import By

from browser import chromium, until

base, admin_key = sys.argv[1], sys.argv[2]
shot = sys.argv[3] if len(sys.argv) > 3 else None


def api(method, path, key=None, body=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if key:
        req.add_header("Authorization", "Bearer " + key)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())




def click(driver, selector):
    """Clicks what `selector` finds, finding it again if the page re-rendered
    it in between (a stale element)."""

    def attempt():
        driver.find_element(By.CSS_SELECTOR, selector).click()
        return True

    until("a click on " + selector, attempt)


def type_into(driver, selector, value):
    """Types `value` into what `selector` finds, scrolled into view, again
    if the element was not ready for keys (re-rendered or not yet laid out:
    Chromium refuses keys to an element it cannot interact with, before
    typing any)."""

    def attempt():
        box = driver.find_element(By.CSS_SELECTOR, selector)
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
        box.send_keys(value)
        return True

    until("typing into " + selector, attempt)


def resize_row(driver, row, value, done):
    """Types `value` into `row`'s min box and clicks its Resize, again if
    the page re-rendered the row in between (its periodic refresh replaces
    the rows, typed values and all), until `done()` holds."""

    def attempt():
        try:
            box = driver.find_element(By.CSS_SELECTOR, row + " input.new-min")
            box.clear()
            box.send_keys(value)
            driver.find_element(By.CSS_SELECTOR, row + " button.resize").click()
        except Exception:  # a stale row: the next attempt finds the new one
            return False
        deadline = time.time() + 2
        while time.time() < deadline:
            if done():
                return True
            time.sleep(0.1)
        return False

    until("a resize of " + row, attempt, timeout=30)


driver = chromium(window="1280,1000", console=True)
report = {}
try:
    driver.get(base + "/")
    row = '#pools tbody tr[data-name="dash"]'
    cell = lambda name: driver.find_element(By.CSS_SELECTOR, row + " td." + name).text
    until("the pool's counts", lambda: cell("available") == "2")
    report["title"] = driver.title
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        raise SystemExit("console errors on load: %r" % errors)
    # Another client takes a binder: the page follows without a reload.
    running_before = int(cell("running"))
    api("POST", "/binders/dash")
    until("the counts to change", lambda: int(cell("running")) == running_before + 1)
    report["running"] = [running_before, running_before + 1]
    # The trends chart shows that handout in this minute's bar, and the
    # counts line, without a reload.
    trend = '#trends .trend[data-name="dash"]:not([data-profile])'
    bars = until("the handout in the chart", lambda: int(driver.find_element(
        By.CSS_SELECTOR, trend + " svg.trend-handouts").get_attribute("data-last")) >= 1
        and driver.find_element(By.CSS_SELECTOR, trend + " svg.trend-handouts"))
    report["trend_last"] = int(bars.get_attribute("data-last"))
    report["trend_bars"] = len(driver.find_elements(By.CSS_SELECTOR, trend + " svg.trend-handouts rect.bar"))
    report["trend_lines"] = len(driver.find_elements(By.CSS_SELECTOR, trend + " svg.trend-counts polyline"))
    report["trend_caption"] = driver.find_element(By.CSS_SELECTOR, trend + " figure:nth-of-type(2) figcaption").text
    # A resize without a key is refused, visibly.
    type_into(driver, row + " input.new-min", "3")
    click(driver, row + " button.resize")
    message = until("the refusal", lambda: "refused" in driver.find_element(By.ID, "message").text
                    and driver.find_element(By.ID, "message"))
    assert "error" in message.get_attribute("class"), message.get_attribute("class")
    report["refused"] = message.text
    assert api("GET", "/pools/dash")["minPool"] == 2
    # With the admin key (kept in this tab's sessionStorage) it works.
    driver.find_element(By.ID, "key").send_keys(admin_key)
    click(driver, "#key-form button[type=submit]")
    until("the key in use", lambda: "key in use" in driver.find_element(By.ID, "message").text)
    assert admin_key not in driver.current_url
    min_input = driver.find_element(By.CSS_SELECTOR, row + " input.new-min")
    min_input.clear()
    min_input.send_keys("3")
    click(driver, row + " button.resize")
    until("the resize", lambda: api("GET", "/pools/dash")["minPool"] == 3)
    until("the page to show it", lambda: cell("min") == "3")
    # With a key the binders show, with their buttons.
    until("the binders table", lambda: driver.find_element(By.ID, "binders-section").is_displayed()
          and len(driver.find_elements(By.CSS_SELECTOR, "#binders tbody tr")) >= 1)
    report["binders"] = len(driver.find_elements(By.CSS_SELECTOR, "#binders tbody tr"))
    # A binding with profiles (`dashp`, when the test made one): a row per
    # profile, each resized on its own.
    if api("GET", "/bindings/dashp", admin_key).get("profiles"):
        prow = lambda p: '#pools tbody tr[data-name="dashp"][data-profile="%s"]' % p
        pcell = lambda p, name: driver.find_element(By.CSS_SELECTOR, prow(p) + " td." + name).text
        until("a row per profile", lambda: pcell("small", "available") == "1"
              and pcell("large", "available") == "2")
        report["profile_rows"] = [
            r.find_element(By.CSS_SELECTOR, "td.name").text
            for r in driver.find_elements(By.CSS_SELECTOR, '#pools tbody tr[data-name="dashp"]')
        ]
        resize_row(driver, prow("large"), "3",
                   lambda: api("GET", "/pools/dashp")["profiles"]["large"]["minPool"] == 3)
        pool = api("GET", "/pools/dashp")
        report["profile_mins"] = {p: c["minPool"] for p, c in pool["profiles"].items()}
        until("the page to show it", lambda: pcell("large", "min") == "3")
        # What is typed survives the page's refresh (every second).
        type_into(driver, prow("small") + " input.new-max", "5")
        time.sleep(2.5)
        kept = driver.find_element(By.CSS_SELECTOR, prow("small") + " input.new-max").get_attribute("value")
        report["typed_kept"] = kept
    if shot:
        driver.save_screenshot(shot)
    print(json.dumps(report))
finally:
    driver.quit()

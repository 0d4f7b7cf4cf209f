"""What the browser scripts share: a headless Chromium (Debian's chromium and
chromium-driver, driven by selenium) and a wait for a page to get there."""

import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service


def chromium(window="1280,800", console=False):
    """A headless Chromium; with `console`, its console log kept."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=" + window):
        options.add_argument(arg)
    if console:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def until(what, check, timeout=15, every=0.1):
    """`check()`'s first truthy value within `timeout` seconds (an exception
    counts as not yet: the page is still rendering); exits naming `what`."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:
            pass
        time.sleep(every)
    raise SystemExit("timed out waiting: " + what)

"""A hostile binder page in a real headless Chromium (selenium, Debian's
chromium and chromium-driver), against a running binderd:

    python hostile_browser.py http://127.0.0.1:PORT /user/EVIL/ /user/OTHER/

The evil binder's `hostile` page fetches its `cookie` route (which sets
`evil=1; Path=/`, `scoped=1`, `far=1; Domain=example.org`) and registers
`sw.js` with scope `/` (its answer says `Service-Worker-Allowed: /`). Then
the dashboard and the other binder's page are opened. Prints a JSON report.
"""

import json
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

base, evil, other = sys.argv[1], sys.argv[2], sys.argv[3]

options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
report = {}
try:
    driver.get(base + evil + "hostile")
    deadline = time.time() + 15
    while not driver.title.startswith("sw:") and time.time() < deadline:
        time.sleep(0.05)
    report["service_worker"] = driver.title
    report["own_cookies"] = driver.execute_script("return document.cookie")

    driver.get(base + "/")
    time.sleep(0.3)
    report["dashboard_cookies"] = driver.execute_script("return document.cookie")
    report["dashboard_controlled"] = driver.execute_script(
        "return !!(navigator.serviceWorker && navigator.serviceWorker.controller)")

    driver.get(base + other + "api/status")
    report["other_binder_cookies"] = driver.execute_script("return document.cookie")
finally:
    driver.quit()
print(json.dumps(report))

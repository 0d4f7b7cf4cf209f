"""The first command's notebook in a real headless Chromium (Debian's
chromium and chromium-driver, driven by selenium): binderd's dashboard shows
the built-in notebook binding's pool, its "Open JupyterLab" button opens a
warm binder's JupyterLab in a new tab (with no way back to the dashboard's
tab), where a new notebook's cell runs to its output; the dashboard's
"Embed" panel says how to put it on a page.

    python notebook_browser.py BINDERD_URL

Prints a JSON report; exits non-zero on the first check that fails.
"""

import json
import sys

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from browser import chromium, until as wait

base = sys.argv[1].rstrip("/")


def until(what, check, timeout=90):
    return wait(what, check, timeout=timeout, every=0.2)


driver = chromium(window="1280,900")
report = {}
try:
    driver.get(base + "/")
    dashboard = driver.current_window_handle
    row = '#pools tbody tr[data-name="notebook"]'
    until("a warm notebook", lambda: int(driver.find_element(
        By.CSS_SELECTOR, row + " td.available").text) >= 1)
    button = until("the open button", lambda: driver.find_element(By.CSS_SELECTOR, row + " button.open-binder"))
    report["button"] = button.text
    # The embed panel, filled in with this server's address.
    driver.find_element(By.CSS_SELECTOR, row + " button.embed").click()
    embed = until("the embed panel", lambda: driver.find_element(By.ID, "embed").text)
    report["embed_spawn_link"] = (base + "/spawn/lab") in embed
    report["embed_script"] = (base + "/binders/notebook") in embed
    until("the open button", lambda: driver.find_element(By.CSS_SELECTOR, row + " button.open-binder").click() or True)
    lab = until("a new tab", lambda: [h for h in driver.window_handles if h != dashboard][0])
    driver.switch_to.window(lab)
    until("JupyterLab", lambda: "/lab" in driver.current_url and "/user/" in driver.current_url)
    report["lab_url_is_a_binder"] = driver.current_url.startswith(base + "/user/")
    # The binder's page has no handle on the dashboard's tab.
    report["opener"] = driver.execute_script("return window.opener === null")
    # A new notebook from the launcher, a cell run to its output.
    until("the launcher's notebook card", lambda: driver.find_element(
        By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"]').click() or True)

    def run_cell():
        editor = driver.find_element(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-InputArea-editor")
        editor.click()
        ActionChains(driver).send_keys("print(6 * 7)").key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        return True

    until("the kernel to be idle", lambda: "Idle" in driver.find_element(
        By.CSS_SELECTOR, ".jp-Notebook-ExecutionIndicator, .jp-StatusBar-TextItem, body").get_attribute("innerText")
        or driver.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-InputArea-editor"))
    until("the cell to run", run_cell)
    report["output"] = until("the cell's output", lambda: driver.find_element(
        By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-OutputArea-output").text)
    print(json.dumps(report))
finally:
    driver.quit()

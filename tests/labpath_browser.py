"""A Binder link with `?labpath=` in a real headless Chromium (Debian's
chromium and chromium-driver, driven by selenium): binderd's `/v2` link is
followed to a warm binder's JupyterLab, which must open the notebook the
link names, from the repository's files in the binder's working dir, and
run its cell (on the binder's warm kernel, over the channels binderd held
for it) to the cell's output.

    python labpath_browser.py LINK NOTEBOOK

Prints a JSON report (the landing URL, the tab that opened, the page's
title); exits non-zero on the first check that fails.
"""

import json
import sys

from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from browser import chromium, until as wait

link, notebook = sys.argv[1], sys.argv[2]


def until(what, check):
    return wait(what, check, timeout=60, every=0.2)


driver = chromium()
try:
    driver.get(link)
    landed = until("JupyterLab's page", lambda: "/lab" in driver.current_url and driver.current_url)

    def opened():
        for tab in driver.find_elements(By.CSS_SELECTOR, ".lm-DockPanel-tabBar .lm-TabBar-tab"):
            if notebook in tab.text:
                return tab.text
        return None

    tab = until("a tab for " + notebook, opened)
    # The notebook's own cell, from the repository's file.
    cell = until("the notebook's cell", lambda: driver.find_element(
        By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-InputArea-editor").text)
    # Run it: JupyterLab's kernel client (which offers the v1 WebSocket
    # subprotocol) on the binder's warm kernel, its output on the page.
    def run_cell():
        editor = driver.find_element(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-InputArea-editor")
        editor.click()  # refused (and retried) while JupyterLab lays it out
        ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.ENTER).key_up(Keys.SHIFT).perform()
        return True

    until("the cell to run", run_cell)
    output = until("the cell's output", lambda: driver.find_element(
        By.CSS_SELECTOR, ".jp-Notebook .jp-Cell .jp-OutputArea-output").text)
    print(json.dumps({"landed": landed, "tab": tab, "cell": cell, "output": output,
                      "title": driver.title}))
finally:
    driver.quit()

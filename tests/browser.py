"""A real browser for the tests of the review page: Debian's headless Chromium, driven by Selenium.

    python -m tests.browser screenshot RUN_DIR/review.html docs/review.png   # the README's picture, as the tests see it

Where Chromium or its driver is missing the browser tests skip, saying so, except where BKD_BROWSER_TESTS=required
(CI: .ci/run installs both and sets it), where that is a failure.
"""

import os
import shutil
import sys

import pytest

CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# What the machine's closed network needs of Chromium: no background connections, no sandbox as root, no GPU.
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
]


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        return "Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)"
    if not (os.path.exists(DRIVER) or shutil.which("chromedriver")):
        return "chromedriver is not installed (apt-get install chromium-driver; .ci/run does)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-dev.txt)"
    return None


def start(downloads: str, profile: str):  # -> selenium.webdriver.Chrome
    """A headless Chromium whose downloads go into `downloads`, with a profile of its own (its local storage)."""
    why = missing()
    if why:
        if os.environ.get("BKD_BROWSER_TESTS") == "required":
            pytest.fail(f"the browser tests are required here: {why}")
        pytest.skip(why)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    for flag in FLAGS + [f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": downloads, "download.prompt_for_download": False}
    )
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER if os.path.exists(DRIVER) else "chromedriver"), options=options)
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
    return driver


def screenshot(page: str, out: str, width: int = 1400, height: int = 900) -> None:
    """A picture of the top of a review page, as a reader first sees it."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        driver = start(tmp, os.path.join(tmp, "profile"))
        try:
            driver.set_window_size(width, height)
            driver.get("file://" + os.path.abspath(page))
            driver.save_screenshot(out)
        finally:
            driver.quit()


if __name__ == "__main__" and sys.argv[1:2] == ["screenshot"]:
    screenshot(sys.argv[2], sys.argv[3])
    print(f"wrote {sys.argv[3]}")

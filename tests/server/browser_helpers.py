"""Headless Chromium for the web page's tests: find it, drive it (selenium), save screenshots.

The browser is Debian's ``chromium`` with its ``chromium-driver`` (or any Chrome and
chromedriver on PATH); tests skip, saying so, when there is none.
"""

import os
import shutil
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("RUSTEEZE_TEST_ARTIFACTS") or Path(__file__).resolve().parents[1] / "artifacts")
INSTALL_HINT = "install them with: apt-get install -y chromium chromium-driver"
DESKTOP = (1280, 800)
PHONE = (390, 844)


def find_chromium() -> tuple[str, str] | str:
    """``(browser, chromedriver)`` paths, or the reason there are none."""
    browser = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        return f"no headless browser for the web page tests: {missing} not found on PATH; {INSTALL_HINT}"
    return browser, driver


def start_chromium():
    """A headless Chromium at desktop size that keeps its console log; skips when there is none."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    found = find_chromium()
    if isinstance(found, str):
        pytest.skip(found)
    browser, driver_path = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    options.add_argument(f"--window-size={DESKTOP[0]},{DESKTOP[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = webdriver.ChromeService(executable_path=driver_path)
    driver = webdriver.Chrome(options=options, service=service)
    set_viewport(driver, *DESKTOP)
    return driver


def set_viewport(driver, width: int, height: int, dark: bool = False) -> None:
    """Emulate a ``width`` x ``height`` screen (a phone below 760 px) and the OS colour scheme."""
    mobile = width < 760
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 2 if mobile else 1, "mobile": mobile},
    )
    scheme = "dark" if dark else "light"
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia", {"features": [{"name": "prefers-color-scheme", "value": scheme}]}
    )


def screenshot(driver, name: str) -> Path:
    """Save the viewport as ``ARTIFACTS/name.png``; returns its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path


def console_errors(driver) -> list[str]:
    """The browser console's errors since the last call (CSP violations, exceptions, failed loads)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def metric(text: str, name: str) -> float:
    """The value of an unlabelled Prometheus sample ``name`` in ``text``."""
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def open_page(driver, url: str, clear: bool = True) -> None:
    """Load the page at desktop size; with ``clear``, forget every saved conversation, setting and key."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    set_viewport(driver, *DESKTOP)
    driver.get(url)
    if clear:
        driver.execute_script("localStorage.clear()")
        driver.get(url)
    console_errors(driver)  # start each test with an empty console
    WebDriverWait(driver, 60).until(lambda d: d.find_element(By.ID, "model").get_attribute("value"))

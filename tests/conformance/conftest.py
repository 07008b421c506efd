"""Fixtures of the conformance tests: a headless Chromium for the HTML report (cdp.py)."""

import pytest
from cdp import BROWSERS, Chromium, find_browser


@pytest.fixture(scope="session")
def chromium():
    """A running headless Chromium, or a skip that says how to get one."""
    exe = find_browser()
    if exe is None:
        pytest.skip("no Chromium found (tried " + ", ".join(BROWSERS) + " and "
                    "$RESBLOCK_CHROMIUM): install Debian's package with "
                    "`apt-get install -y chromium` to run the HTML report's browser tests")
    browser = Chromium(exe)
    try:
        browser.send("Browser.getVersion")
    except Exception as e:  # noqa: BLE001 - a browser that cannot start is a skip reason
        browser.close()
        pytest.skip(f"{exe} did not start headless: {e}")
    yield browser
    browser.close()

"""Fixtures of the conformance tests: a headless Chromium for the HTML report (cdp.py),
and a wrong implementation file for the CLI's exit codes and reports."""

import os

import pytest
from cdp import BROWSERS, Chromium, find_browser


@pytest.fixture(scope="session")
def chromium():
    """A running headless Chromium, or a skip that says how to get one."""
    exe = find_browser()
    if exe is None:
        if os.environ.get("RESBLOCK_REQUIRE_BROWSER"):  # set by .ci/run
            pytest.fail("no Chromium found, and RESBLOCK_REQUIRE_BROWSER is set: "
                        "`apt-get install -y chromium`")
        pytest.skip("no Chromium found (tried " + ", ".join(BROWSERS) + " and "
                    "$RESBLOCK_CHROMIUM): install Debian's package with "
                    "`apt-get install -y chromium` to run the HTML report's browser tests")
    browser = None
    try:
        browser = Chromium(exe)
        browser.send("Browser.getVersion")
    except Exception as e:  # noqa: BLE001 - a browser that cannot start is a skip reason
        if browser is not None:
            browser.close()
        (pytest.fail if os.environ.get("RESBLOCK_REQUIRE_BROWSER") else pytest.skip)(
            f"{exe} did not start headless: {e}")
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def missing_residual_impl(tmp_path_factory):
    """A file whose ``forward`` is the missing-residual mistake (a NumPy twin)."""
    p = tmp_path_factory.mktemp("impl") / "wrong.py"
    p.write_text("from resblock.conformance.variants import make_forward\n\n"
                 "forward = make_forward('missing_residual')\n")
    return p

"""Fixtures of the conformance tests: a headless Chromium for the HTML report (cdp.py),
a wrong implementation file for the CLI's exit codes and reports, and the derived cases
of the program-protocol tests."""

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
    p.write_text("from resblock.conformance.mistakes.variants import make_forward\n\n"
                 "forward = make_forward('missing_residual')\n")
    return p


# The cases of the program-protocol tests (running/test_program.py and test_program_files.py),
# (n, h, w, features, seed): batch 1 and 2; 1x1, 3x5, 4x4; features 1, 2, 4.
PROGRAM_SHAPES = [
    (1, 1, 1, 1, 0),  # one value per channel: batch variance 0
    (2, 1, 1, 2, 0),  # only the kernel's centre tap is used
    (1, 3, 5, 4, 0),
    (2, 3, 5, 4, 0),
    (2, 3, 5, 4, 1),  # same shape group as the previous case
    (1, 4, 4, 2, 0),
    (2, 4, 4, 1, 0),
]


def _program_case(n, h, w, f, seed):
    from resblock.spec.cases import Case
    from resblock.spec.derivation import derive_random_variables, derive_x

    case = Case(family="functional", inputs="normal", n=n, h=h, w=w, features=f, seed=seed)
    params, stats = derive_random_variables(case)
    return case.id, derive_x(case), params, stats


@pytest.fixture(scope="session")
def program_cases():
    """``(id, x, params, stats)`` of each derived functional case of PROGRAM_SHAPES."""
    return [_program_case(*s) for s in PROGRAM_SHAPES]

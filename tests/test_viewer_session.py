"""The viewer keeps a reader logged in past the access token's short life (issue 7's tokens).

Access tokens live an hour; a reading session lasts a shift. The page renews its token with the
rotating refresh token: here the access token is spoilt in the page's storage, as an expired one
would be, and the next API call must renew it and carry on instead of throwing the reader out.
"""

from __future__ import annotations

from typing import Any

from tests import browser as browser_fixtures
from tests.browser import LiveHub

browser = browser_fixtures.browser
live_hub = browser_fixtures.live_hub
page = browser_fixtures.page
screenshot = browser_fixtures.screenshot

TIMEOUT_MS = 90_000


def _storage(page: Any, key: str) -> str | None:
    return page.evaluate(f"sessionStorage.getItem('{key}')")


def test_a_refused_access_token_is_renewed_and_the_reader_stays(
    live_hub: LiveHub, page: Any, screenshot: Any
) -> None:
    page.goto(f"{live_hub.base}/")
    page.fill("input[name=username]", "county_reader")
    page.fill("input[name=password]", "demo")
    page.click("button[name=login]")
    page.wait_for_selector("table.worklist", timeout=TIMEOUT_MS)
    first_refresh = _storage(page, "rdx.refresh")
    assert first_refresh, "the login keeps a refresh token"

    page.evaluate("sessionStorage.setItem('rdx.token', 'not-a-valid-token')")
    with page.expect_response(lambda r: r.url.endswith("/api/v1/auth/refresh")) as renewal:
        page.reload()
    assert renewal.value.status == 200
    page.wait_for_selector("table.worklist", timeout=TIMEOUT_MS)
    assert page.locator("input[name=password]").count() == 0, "still logged in"
    assert _storage(page, "rdx.token") not in (None, "not-a-valid-token")
    assert _storage(page, "rdx.refresh") not in (None, first_refresh), "refresh token rotated"
    screenshot("worklist-after-renewal")

    # A refresh token that the hub refuses (revoked, expired) ends the session cleanly.
    page.evaluate(
        "sessionStorage.setItem('rdx.token', 'x'); sessionStorage.setItem('rdx.refresh', 'y')"
    )
    page.reload()
    page.wait_for_selector("input[name=password]", timeout=TIMEOUT_MS)

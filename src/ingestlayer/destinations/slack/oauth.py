"""Slack OAuth v2 ("Add to Slack"): the app's settings, the signed state, the code exchange.

The flow (routes in :mod:`ingestlayer.api.slack_oauth`):

1. ``GET /v1/connections/slack/authorize?name=slack-main`` (admin key) answers with a redirect to
   ``{INGESTLAYER_SLACK_BASE_URL}/oauth/v2/authorize?client_id…&scope…&redirect_uri…&state…``.
   The ``state`` is sealed with the server's master key (Fernet: encrypted and authenticated), so
   it cannot be forged or read; it binds the project, the connection name and the redirect URI,
   expires after :data:`STATE_TTL_SECONDS`, and is accepted once.
2. Slack sends the browser back to ``{INGESTLAYER_PUBLIC_URL}/oauth/slack/callback?code…&state…``;
   the server exchanges the code at ``{INGESTLAYER_SLACK_API_URL}/oauth.v2.access`` (client id and
   secret as HTTP Basic, as Slack recommends) and stores the bot token (``xoxb-…``) encrypted as
   the project's secret ``name``: pipelines use it as ``connection: ref:NAME``.

Settings are read from the environment when a request comes in:

- ``INGESTLAYER_SLACK_CLIENT_ID``, ``INGESTLAYER_SLACK_CLIENT_SECRET``: the Slack app's credentials;
- ``INGESTLAYER_PUBLIC_URL``: this server's address as browsers reach it (the redirect URI is
  ``{INGESTLAYER_PUBLIC_URL}/oauth/slack/callback``; register it in the Slack app);
- ``INGESTLAYER_SLACK_BASE_URL`` (default ``https://slack.com``) and ``INGESTLAYER_SLACK_API_URL``
  (default ``https://slack.com/api``): overrides for tests and proxies;
- ``INGESTLAYER_SLACK_SCOPES`` (default ``chat:write,chat:write.public``).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from ingestlayer.destinations.chat import read_bounded
from ingestlayer.secretbox import SecretBox, SecretDecryptError

STATE_TTL_SECONDS = 600
EXCHANGE_TIMEOUT_SECONDS = 15.0
DEFAULT_BASE_URL = "https://slack.com"
DEFAULT_API_URL = "https://slack.com/api"
DEFAULT_SCOPES = "chat:write,chat:write.public"
CALLBACK_PATH = "/oauth/slack/callback"
STATE_CACHE_PREFIX = "slack-oauth-state:"

# What Slack's oauth.v2.access error codes mean for the person installing.
EXCHANGE_ERRORS = {
    "invalid_code": "the authorization code is invalid, expired or already used; start again",
    "bad_client_secret": "Slack rejected INGESTLAYER_SLACK_CLIENT_SECRET",
    "invalid_client_id": "Slack rejected INGESTLAYER_SLACK_CLIENT_ID",
    "bad_redirect_uri": "the redirect URI does not match the Slack app's settings "
    "(register {INGESTLAYER_PUBLIC_URL}/oauth/slack/callback)",
    "invalid_grant_type": "Slack rejected the grant type",
    "oauth_authorization_url_mismatch": "the flow was started on the wrong authorize URL (v1 vs v2)",
    "cannot_install_an_org_installed_app": "the app is installed on the Enterprise org already",
}


class SlackOAuthError(Exception):
    """A failed step of the flow: ``status`` 400 for the caller's or config problems, 502 for Slack's."""

    def __init__(self, message: str, *, status: int = 400, code: str = "slack_oauth_failed") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


def _url(name: str, value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SlackOAuthError(f"{name} must be an absolute http(s) URL", code="slack_not_configured")
    return value.rstrip("/")


@dataclass(frozen=True)
class SlackApp:
    client_id: str
    client_secret: str
    redirect_uri: str
    base_url: str
    api_url: str
    scopes: str

    @classmethod
    def from_env(cls, public_url: str | None = None) -> SlackApp:
        """The Slack app's settings; raises :class:`SlackOAuthError` naming what is missing."""
        env = os.environ
        missing = [
            n for n in ("INGESTLAYER_SLACK_CLIENT_ID", "INGESTLAYER_SLACK_CLIENT_SECRET") if not env.get(n)
        ]
        public = public_url or env.get("INGESTLAYER_PUBLIC_URL")
        if not public:
            missing.append("INGESTLAYER_PUBLIC_URL")
        if missing:
            raise SlackOAuthError(
                f"Slack is not configured on this server: set {', '.join(missing)}",
                code="slack_not_configured",
            )
        assert public is not None
        return cls(
            client_id=env["INGESTLAYER_SLACK_CLIENT_ID"],
            client_secret=env["INGESTLAYER_SLACK_CLIENT_SECRET"],
            redirect_uri=_url("INGESTLAYER_PUBLIC_URL", public) + CALLBACK_PATH,
            base_url=_url(
                "INGESTLAYER_SLACK_BASE_URL", env.get("INGESTLAYER_SLACK_BASE_URL") or DEFAULT_BASE_URL
            ),
            api_url=_url(
                "INGESTLAYER_SLACK_API_URL", env.get("INGESTLAYER_SLACK_API_URL") or DEFAULT_API_URL
            ),
            scopes=(env.get("INGESTLAYER_SLACK_SCOPES") or DEFAULT_SCOPES).replace(" ", ""),
        )

    def authorize_url(self, state: str) -> str:
        query = urlencode(
            {
                "client_id": self.client_id,
                "scope": self.scopes,
                "redirect_uri": self.redirect_uri,
                "state": state,
            }
        )
        return f"{self.base_url}/oauth/v2/authorize?{query}"


@dataclass(frozen=True)
class OAuthState:
    project_id: str
    name: str
    nonce: str
    expires_at: float
    redirect_uri: str
    # sha256 of the secret cookie set in the browser that started the connection (the dashboard's):
    # only that browser may finish it. None for links handed out through the API.
    browser: str | None = None


def browser_digest(browser_secret: str) -> str:
    return hashlib.sha256(browser_secret.encode()).hexdigest()


def seal_state(
    box: SecretBox,
    project_id: str,
    name: str,
    redirect_uri: str,
    *,
    browser_secret: str | None = None,
    now: float | None = None,
) -> tuple[str, OAuthState]:
    """A new state: (the sealed string for the ``state`` parameter, what it holds). With
    ``browser_secret``, only a callback carrying that secret (a cookie) may use it."""
    state = OAuthState(
        project_id=project_id,
        name=name,
        nonce=secrets.token_urlsafe(18),
        expires_at=(time.time() if now is None else now) + STATE_TTL_SECONDS,
        redirect_uri=redirect_uri,
        browser=None if browser_secret is None else browser_digest(browser_secret),
    )
    raw = orjson.dumps(
        {
            "p": state.project_id,
            "n": state.name,
            "x": state.nonce,
            "e": state.expires_at,
            "r": redirect_uri,
            "b": state.browser,
        }
    )
    return box.encrypt(raw.decode()).decode("ascii"), state


def open_state(box: SecretBox, sealed: str, *, now: float | None = None) -> OAuthState:
    """Check and read a state: raises :class:`SlackOAuthError` when forged, garbled or expired."""
    try:
        raw = orjson.loads(box.decrypt(sealed.encode("ascii")))
        state = OAuthState(
            project_id=str(raw["p"]),
            name=str(raw["n"]),
            nonce=str(raw["x"]),
            expires_at=float(raw["e"]),
            redirect_uri=str(raw["r"]),
            browser=None if raw.get("b") is None else str(raw["b"]),
        )
    except (SecretDecryptError, UnicodeEncodeError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise SlackOAuthError(
            "the state parameter is not valid: start the connection again from ingestlayer",
            code="invalid_state",
        ) from None
    if (time.time() if now is None else now) > state.expires_at:
        raise SlackOAuthError(
            f"this authorization link expired (links are valid for {STATE_TTL_SECONDS // 60} minutes): "
            "start the connection again",
            code="expired_state",
        )
    return state


@dataclass(frozen=True)
class Installation:
    access_token: str
    team_id: str | None
    team_name: str | None
    bot_user_id: str | None
    scope: str | None

    @property
    def workspace(self) -> str:
        return self.team_name or self.team_id or "your workspace"


# Slack's error codes are short snake_case words. Anything else in ``error`` (a proxy or a
# server in Slack's place echoing the request, with the client secret in its Basic
# authorization) is not shown: the callback page needs no key, and its message is logged.
_ERROR_CODE = re.compile(r"[a-z0-9_.]{1,64}")


def slack_error_code(value: object) -> str | None:
    """Slack's ``error`` field when it is an error code; ``"unrecognised error"`` otherwise."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and _ERROR_CODE.fullmatch(value):
        return value
    return "unrecognised error"


async def exchange_code(app: SlackApp, code: str, redirect_uri: str) -> Installation:
    """``oauth.v2.access``: the code for a bot token. Raises :class:`SlackOAuthError`."""
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=EXCHANGE_TIMEOUT_SECONDS)) as session,
            session.post(
                f"{app.api_url}/oauth.v2.access",
                data={"code": code, "redirect_uri": redirect_uri},
                headers={"Authorization": aiohttp.encode_basic_auth(app.client_id, app.client_secret)},
                allow_redirects=False,
            ) as resp,
        ):
            status = resp.status
            raw = await read_bounded(resp)
    except TimeoutError:
        raise SlackOAuthError("Slack did not answer in time; try again", status=502) from None
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        raise SlackOAuthError(
            f"could not reach Slack ({type(exc).__name__}); try again", status=502
        ) from None
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise SlackOAuthError(f"Slack answered HTTP {status} without a JSON body", status=502)
    if body.get("ok") is not True:
        error = slack_error_code(body.get("error")) or f"HTTP {status}"
        hint = EXCHANGE_ERRORS.get(error)
        raise SlackOAuthError(
            f"Slack refused the authorization: {error}" + (f" ({hint})" if hint else ""),
            code="slack_refused",
        )
    token = body.get("access_token")
    if not isinstance(token, str) or not token or body.get("token_type", "bot") != "bot":
        raise SlackOAuthError(
            "Slack did not return a bot token: give the Slack app a bot user with the chat:write scope",
            code="slack_refused",
        )
    team = body.get("team") if isinstance(body.get("team"), dict) else {}
    enterprise = body.get("enterprise") if isinstance(body.get("enterprise"), dict) else {}
    return Installation(
        access_token=token,
        team_id=(team or {}).get("id") or (enterprise or {}).get("id"),
        team_name=(team or {}).get("name") or (enterprise or {}).get("name"),
        bot_user_id=body.get("bot_user_id"),
        scope=body.get("scope"),
    )

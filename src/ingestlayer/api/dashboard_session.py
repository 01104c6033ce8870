"""Dashboard sign-in: an encrypted session cookie, CSRF tokens, flash messages.

The session cookie is a Fernet token (the server's master key, :class:`~ingestlayer.secretbox.
SecretBox`) holding the admin key, an expiry and the session's CSRF token. It is ``HttpOnly``,
``SameSite=Strict`` and, over https, ``Secure``. Every request decrypts it and looks the key up
again (:meth:`KeyCache.lookup`), so revoking the key signs the browser out.

Every POST form carries the CSRF token in a hidden ``csrf`` field, compared in constant time;
the sign-in form, which comes before any session, uses a double-submit cookie instead.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import parse_qsl, quote

import orjson
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import RedirectResponse

from ingestlayer.api.auth import Principal
from ingestlayer.runtime import Runtime
from ingestlayer.secretbox import SecretDecryptError

SESSION_COOKIE = "il_session"
LOGIN_COOKIE = "il_login"
FLASH_COOKIE = "il_flash"
SESSION_SECONDS = 12 * 3600
LOGIN_FORM_SECONDS = 3600
MAX_FORM_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Session:
    key: str
    expires_at: float
    csrf: str
    principal: Principal

    @property
    def project_id(self) -> str:
        return self.principal.project_id


def runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set_cookie(request: Request, response: Response, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def _clear_cookie(request: Request, response: Response, name: str) -> None:
    response.delete_cookie(name, path="/", httponly=True, samesite="strict", secure=_secure(request))


def seal(rt: Runtime, data: dict[str, Any]) -> str:
    return rt.box.encrypt(orjson.dumps(data).decode()).decode()


def unseal(rt: Runtime, token: str | None) -> dict[str, Any] | None:
    if not token:
        return None
    try:
        data = orjson.loads(rt.box.decrypt(token.encode()))
    except (SecretDecryptError, ValueError):
        return None
    return data if isinstance(data, dict) else None


async def load_session(request: Request) -> Session | None:
    """The signed-in session, or None (no cookie, tampered, expired, or the key was revoked)."""
    rt = runtime(request)
    data = unseal(rt, request.cookies.get(SESSION_COOKIE))
    if data is None:
        return None
    key, exp, csrf = data.get("k"), data.get("exp"), data.get("csrf")
    if not isinstance(key, str) or not isinstance(exp, (int, float)) or not isinstance(csrf, str):
        return None
    if exp < time.time():
        return None
    principal = await rt.keys.lookup(key)
    if principal is None or principal.kind != "admin":
        return None
    return Session(key=key, expires_at=float(exp), csrf=csrf, principal=principal)


def start_session(request: Request, response: Response, key: str) -> None:
    rt = runtime(request)
    exp = time.time() + SESSION_SECONDS
    token = seal(rt, {"k": key, "exp": exp, "csrf": secrets.token_urlsafe(24)})
    _set_cookie(request, response, SESSION_COOKIE, token, SESSION_SECONDS)
    _clear_cookie(request, response, LOGIN_COOKIE)


def end_session(request: Request, response: Response) -> None:
    _clear_cookie(request, response, SESSION_COOKIE)


def login_csrf(request: Request) -> str:
    """The sign-in form's double-submit token: the browser's login cookie, or a new one."""
    token = request.cookies.get(LOGIN_COOKIE)
    if not token or len(token) > 100:
        token = secrets.token_urlsafe(24)
    return token


def remember_login_csrf(request: Request, response: Response, token: str) -> None:
    _set_cookie(request, response, LOGIN_COOKIE, token, LOGIN_FORM_SECONDS)


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def read_form(request: Request) -> dict[str, str] | None:
    """An ``application/x-www-form-urlencoded`` body as a dict (last value wins); None if too big."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_FORM_BYTES:
            return None
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def safe_next(target: str | None) -> str:
    """Only same-site paths: never an absolute URL or a scheme-relative ``//host``."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


class LoginRequired(Exception):
    """Raised by :func:`signed_in`; answered with the redirect of :func:`to_login`."""


async def signed_in(request: Request) -> Session:
    """The signed-in session of a dashboard page (a dependency); otherwise off to the login page."""
    sess = await load_session(request)
    if sess is None:
        raise LoginRequired
    return sess


SignedIn = Annotated[Session, Depends(signed_in)]


def install_login_redirect(app: FastAPI) -> None:
    async def redirect(request: Request, _exc: Exception) -> Response:
        return to_login(request)

    app.add_exception_handler(LoginRequired, redirect)


def to_login(request: Request) -> RedirectResponse:
    path = request.url.path
    if request.url.query:
        path += "?" + request.url.query
    target = "/login" if request.method != "GET" or path == "/" else "/login?next=" + quote(path, safe="")
    response = RedirectResponse(target, status_code=303)
    if request.cookies.get(SESSION_COOKIE):
        end_session(request, response)
    return response


def set_flash(request: Request, response: Response, message: str, kind: str = "ok") -> None:
    _set_cookie(request, response, FLASH_COOKIE, seal(runtime(request), {"m": message, "k": kind}), 60)


def read_flash(request: Request) -> tuple[str, str] | None:
    """The message a POST left for the page it redirected to: (text, "ok" | "error")."""
    data = unseal(runtime(request), request.cookies.get(FLASH_COOKIE))
    if not data or not isinstance(data.get("m"), str):
        return None
    return str(data["m"]), str(data.get("k", "ok"))


def clear_flash(request: Request, response: Response) -> None:
    if request.cookies.get(FLASH_COOKIE):
        _clear_cookie(request, response, FLASH_COOKIE)

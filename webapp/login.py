"""Signing in, with a brake on password guessing.

Failed sign-ins are counted per username and per client address in Django's cache,
which every web process shares (Redis in a deployment, files under ``VAR_DIR`` in
the embedded mode; ``CACHES`` in settings). Once a username has
``LOGIN_FAILURES_PER_USERNAME`` failures, or an address ``LOGIN_FAILURES_PER_IP``,
within one window of ``LOGIN_FAILURE_WINDOW`` seconds, every sign-in for that
username or from that address is answered 429 for a whole window, and the password
is not looked at: a blocked attempt with the right password gets the same answer as
one with a wrong password, so the block cannot be used to test guesses. A successful
sign-in clears the username's count (not the address's: one person's success must
not reset an attacker sharing their network).

An attempt is counted before its password is checked (``attempt_reserve``: increment,
then refuse above the limit), so parallel sign-ins cannot run more password checks than
the limit; a success gives its reservation back. Counts live in fixed windows (one cache
key per window, created with ``add`` and raised with ``incr``, both atomic on Redis); each key's windows start at an offset
drawn from its hash, so not every count resets at the same moment. A username that
does not exist is counted like any other, so the block reveals nothing about which
accounts exist.

Both password forms are guarded: ``/login/`` and the Django admin's login
(``webapp/urls.py``). Failures are counted from Django's ``user_login_failed``
signal, so whatever asks ``authenticate()`` on behalf of a request is counted too.

If the shared cache is down, sign-in still works: the counts fall back to this process
(``_Counts``) and the log says so.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import wraps

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_login_failed
from django.contrib.auth.views import LoginView
from django.core.cache import cache
from django.core.cache.backends.locmem import LocMemCache
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

BLOCKED_TEMPLATE = "registration/login_blocked.html"
log = logging.getLogger(__name__)


# --- who is asking ------------------------------------------------------------------------------


def client_ip(request: HttpRequest) -> str:
    """The client's address: ``REMOTE_ADDR``, or with ``NUM_PROXIES`` trusted proxies in front,
    the address the outermost of them saw (counted from the right of ``X-Forwarded-For``;
    entries further left are whatever the client chose to send)."""
    proxies = getattr(settings, "NUM_PROXIES", 0)
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    if proxies > 0 and forwarded:
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-min(proxies, len(hops))]
    return request.META.get("REMOTE_ADDR", "") or "unknown"


def _username_of(credentials_or_post) -> str:
    return str(credentials_or_post.get(get_user_model().USERNAME_FIELD) or "").strip().casefold()


def _subjects(request: HttpRequest, username: str) -> list[tuple[str, str, int]]:
    """(kind, digest, limit) for each count an attempt falls under. Digests keep usernames
    and addresses out of cache keys."""
    subjects = [("ip", _digest(client_ip(request)), settings.LOGIN_FAILURES_PER_IP)]
    if username:
        subjects.append(("user", _digest(username), settings.LOGIN_FAILURES_PER_USERNAME))
    return subjects


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


# --- counting -----------------------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _window(digest: str, now: float) -> tuple[str, float]:
    """This subject's current window: its key suffix and the moment it ends."""
    length = settings.LOGIN_FAILURE_WINDOW
    offset = int(digest[:8], 16) % length
    index = math.floor((now + offset) / length)
    return str(index), (index + 1) * length - offset


def _count_key(kind: str, digest: str, window: str) -> str:
    return f"login-failures:{kind}:{digest}:{window}"


def _block_key(kind: str, digest: str) -> str:
    return f"login-blocked:{kind}:{digest}"


class _Counts:
    """The shared cache, or, while it cannot be reached, a count in this process only.

    A Redis outage must not stop people signing in: the throttle then degrades to a count
    per web process (still a brake, a weaker one) and says so in the log, once per outage.
    """

    def __init__(self):
        self.local = LocMemCache("tandem-login-fallback", {"TIMEOUT": None})
        self.degraded = False

    def __getattr__(self, operation: str):
        def call(*args, **kwargs):
            try:
                result = getattr(cache, operation)(*args, **kwargs)
            except ValueError:  # incr of a missing key: the cache answered
                raise
            except Exception as error:  # the shared cache is down or unreachable
                if not self.degraded:
                    log.warning(
                        "Sign-in throttle: the shared cache cannot be reached (%s); counting failed "
                        "sign-ins in each web process only until it is back.",
                        error,
                    )
                    self.degraded = True
                return getattr(self.local, operation)(*args, **kwargs)
            if self.degraded:
                log.warning("Sign-in throttle: the shared cache is back; counts are shared again.")
                self.degraded = False
            return result

        return call


counts = _Counts()


def blocked_until(request: HttpRequest, username: str) -> float | None:
    """When an attempt for ``username`` from this request's address may be made again
    (a Unix time), or None if it may be made now."""
    now = _now()
    keys = [_block_key(kind, digest) for kind, digest, _limit in _subjects(request, username.casefold())]
    until = max((t for t in counts.get_many(keys).values() if isinstance(t, int | float)), default=None)
    return until if until is not None and until > now else None


def _count_up(kind: str, digest: str, now: float) -> int:
    """Raise this subject's count in its current window by one, atomically; the new count."""
    window, ends = _window(digest, now)
    key = _count_key(kind, digest, window)
    # The key outlives its window a little; what ends the window is the key's name.
    ttl = math.ceil(ends - now) + 60
    counts.add(key, 0, timeout=ttl)
    try:
        count = counts.incr(key)
    except ValueError:  # evicted between add and incr
        counts.add(key, 1, timeout=ttl)
        count = 1
    # Some backends' incr rewrites the key with the default timeout; put the window's back.
    counts.touch(key, timeout=ttl)
    return count


def _block(kind: str, digest: str, now: float) -> None:
    window_length = settings.LOGIN_FAILURE_WINDOW
    counts.add(_block_key(kind, digest), now + window_length, timeout=window_length)


def attempt_reserve(request: HttpRequest, username: str) -> bool:
    """Count this attempt before its password is checked; False when it is over a limit.

    Reserving first (increment, then refuse above the limit) is what holds under parallel
    sign-ins: sixteen at once for one username get counts 1 to 16 and only the first
    ``LOGIN_FAILURES_PER_USERNAME`` reach the password check. A successful attempt gives its
    reservation back (``success_record``), so only failures use up the limit.
    """
    now = _now()
    reserved = []
    allowed = True
    for kind, digest, limit in _subjects(request, username):
        count = _count_up(kind, digest, now)
        reserved.append((kind, digest, limit, count))
        if count > limit:
            _block(kind, digest, now)
            allowed = False
    request._login_reserved = reserved
    return allowed


def failure_record(request: HttpRequest, username: str) -> None:
    """Count one failed attempt; block the username or the address once it reaches its limit.

    An attempt that ``attempt_reserve`` counted already is not counted twice."""
    now = _now()
    reserved = getattr(request, "_login_reserved", None)
    if reserved is None:
        reserved = [
            (kind, digest, limit, _count_up(kind, digest, now))
            for kind, digest, limit in _subjects(request, username)
        ]
    for kind, digest, limit, count in reserved:
        if count >= limit:
            _block(kind, digest, now)


def success_record(username: str, request: HttpRequest | None = None) -> None:
    """A successful sign-in clears the username's count in the current window and gives back
    the address's reservation (one person's success must not use up their network's limit)."""
    username = username.strip().casefold()
    digest = _digest(username)
    window, _ends = _window(digest, _now())
    counts.delete(_count_key("user", digest, window))
    for kind, ip_digest, _limit, _count in getattr(request, "_login_reserved", None) or []:
        if kind == "ip":
            ip_window, _ = _window(ip_digest, _now())
            try:
                counts.decr(_count_key("ip", ip_digest, ip_window))
            except ValueError:
                pass


@receiver(user_login_failed, dispatch_uid="tandem-login-failed")
def _on_login_failed(sender, credentials, request=None, **kwargs) -> None:
    # Only attempts made over the web count; authenticate() from a shell or a test has no request.
    if request is not None:
        failure_record(request, _username_of(credentials))


@receiver(user_logged_in, dispatch_uid="tandem-logged-in")
def _on_logged_in(sender, request, user, **kwargs) -> None:
    success_record(user.get_username(), request)


# --- the views ------------------------------------------------------------------------------------


def refuse_while_blocked(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Answer a sign-in POST with 429 while its username or address is blocked, or when this
    attempt is over a limit, before the wrapped view (and so the password check) runs."""

    @wraps(view)
    def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        if request.method == "POST":
            username = _username_of(request.POST)
            until = blocked_until(request, username)
            if until is None and not attempt_reserve(request, username):
                until = blocked_until(request, username) or _now() + settings.LOGIN_FAILURE_WINDOW
            if until is not None:
                return _blocked_response(request, until)
        return view(request, *args, **kwargs)

    return wrapped


def _blocked_response(request: HttpRequest, until: float) -> HttpResponse:
    seconds = max(1, math.ceil(until - _now()))
    context = {
        "retry_at": datetime.fromtimestamp(until, tz=UTC),
        "minutes": max(1, math.ceil(seconds / 60)),
    }
    response = render(request, BLOCKED_TEMPLATE, context, status=429)
    response["Retry-After"] = str(seconds)
    return response


login = refuse_while_blocked(LoginView.as_view())

"""The Jinja2 environment for the few templates rendered on every request of a hot path.

The annotator's work partial is drawn again after every submit; Django's template engine
took about a fifth of that request's CPU, Jinja2 (compiled to Python) a small part of it.
Autoescaping is on, as in Django's templates, and Django's safe strings stay unescaped.
"""

from __future__ import annotations

from functools import lru_cache

from django.template.defaultfilters import date
from django.urls import get_script_prefix, reverse
from jinja2 import Environment


def url(name: str, *args) -> str:
    """``reverse(name, args=args)``, remembered: a page links the same few URLs on every draw."""
    return _reverse(get_script_prefix(), name, args)


@lru_cache(maxsize=8192)
def _reverse(prefix: str, name: str, args: tuple) -> str:
    return reverse(name, args=args)  # the prefix is part of the key: reverse() reads it too


def environment(**options) -> Environment:
    env = Environment(**options)
    env.globals["url"] = url
    env.filters["date"] = date  # Django's, so times show in the site's time zone as elsewhere
    return env

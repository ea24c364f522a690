"""JSON request bodies for the API that PostgreSQL can store, or a 400 that says why.

DRF's own ``JSONParser`` hands on whatever ``json.loads`` returns, so a body with
``"\\u0000"`` or a lone surrogate (``"\\ud800"``) reached the database inside a free-form
field (a run's ``config``, a tag) and failed there as a 500, and a body nested a few
thousand levels deep raised ``RecursionError`` (another 500). Checked here, once, for every
endpoint; the walk is iterative and the body is already capped by
``DATA_UPLOAD_MAX_MEMORY_SIZE``.
"""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.exceptions import APIException, ParseError
from rest_framework.parsers import JSONParser

from annotation.importers import human_size

# No API body needs more: a prompt's conversation is three levels, a run's config a few.
MAX_DEPTH = 32
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class StorableJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise ParseError(f"JSON parse error - nested more than {MAX_DEPTH} levels deep") from None
        problem = unstorable(data)
        if problem:
            raise ParseError(f"JSON parse error - {problem}")
        return data


def unstorable(value: Any) -> str | None:
    """Why PostgreSQL could not store ``value`` as parsed JSON, or None when it can."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                return "strings may not contain NUL (\\u0000) characters"
            if _SURROGATE.search(item):
                return "strings may not contain lone surrogates (\\ud800-\\udfff) outside a pair"
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"nested more than {MAX_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def api_error(exc: Exception) -> Exception:
    """Django's refusal of an oversized body, as an API error with a message (not a bare 400 page)."""
    if isinstance(exc, RequestDataTooBig):
        size = human_size(settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        return RequestTooLarge(f"The request body is larger than {size}, the most the API takes.")
    return exc

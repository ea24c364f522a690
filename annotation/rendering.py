"""Markdown from prompts, responses, rationales and guidelines -> HTML that cannot run anything.

Two layers, because either alone has failed somewhere before: markdown-it renders
with raw HTML switched off (a ``<script>`` in the text becomes visible text), and
nh3 (ammonia) then keeps only an allow-list of tags and attributes and only
http(s)/mailto URLs, so no ``on*`` handler, ``style`` or ``javascript:`` link can
survive even if the renderer ever let one through. Images are dropped: a remote
image would tell its host who is annotating and when.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from django.utils.safestring import SafeString, mark_safe
from markdown_it import MarkdownIt

_markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
    ["table", "strikethrough"]
)

ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "s", "code", "pre", "blockquote",
    "ul", "ol", "li", "h1", "h2", "h3", "h4", "h5", "h6",
    "table", "thead", "tbody", "tr", "th", "td", "a",
}  # fmt: skip
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "code": {"class"},
    "ol": {"start"},
    "th": {"style"},
    "td": {"style"},
}
URL_SCHEMES = {"http", "https", "mailto"}


@lru_cache(maxsize=4096)
def _render(text: str) -> str:
    html = _markdown.render(text)
    return nh3.clean(
        html,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
        # Table alignment is the only inline style markdown-it writes; keep nothing else.
        filter_style_properties={"text-align"},
        strip_comments=True,
    )


def markdown_to_safe_html(text: str | None) -> SafeString:
    """Render ``text`` as markdown and sanitise the HTML; the result is safe to insert."""
    return mark_safe(_render(text or ""))  # noqa: S308 - sanitised by nh3 just above

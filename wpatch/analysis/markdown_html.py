"""report.md as HTML for report.html, with nothing in it that could run: report.md carries values from the data
(categories, words, the pairs file's path, settings), so its markdown is rendered with no HTML of its own (a tag
in the text is shown as text) and with links and images only into the run's folder (relative, no scheme).
"""

import html
import re
from xml.etree.ElementTree import Element

import markdown
from markdown import util
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor

SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")  # javascript:, data:, http: ...
URL_ATTRIBUTES = {"a": "href", "img": "src"}


def local_url(url: str) -> bool:
    """`url` is relative to the page's folder: no scheme, not rooted (`/`, `//host`; a browser reads `\\` as `/`),
    read as a browser reads it (character references decoded, white space and control characters dropped)."""
    url = html.unescape(url.replace(util.AMP_SUBSTITUTE, "&"))  # markdown's own `&` stand-in (mail links)
    url = "".join(ch for ch in url if ord(ch) > 0x20 and ch != "\x7f")
    return not SCHEME.match(url) and not url.startswith(("/", "\\"))


class LocalLinks(Treeprocessor):
    """Drops the target of every link or image that would leave the run's folder (the text stays)."""

    def run(self, root: Element) -> None:
        for element in root.iter():
            attribute = URL_ATTRIBUTES.get(element.tag)
            if attribute and not local_url(element.get(attribute, "")):
                del element.attrib[attribute]


class TextOnly(Extension):
    """Markdown without raw HTML (tags and HTML blocks are escaped as text) and with `LocalLinks`."""

    def extendMarkdown(self, md: markdown.Markdown) -> None:
        md.preprocessors.deregister("html_block")
        md.inlinePatterns.deregister("html")
        md.treeprocessors.register(LocalLinks(md), "local_links", -1)  # after `unescape` (0) has restored the URLs


def markdown_html(text: str) -> str:
    """The HTML of markdown `text` (with tables), its raw HTML shown as text and its links kept local."""
    return markdown.markdown(text, extensions=["tables", TextOnly()])

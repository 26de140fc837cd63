"""The report's two renderings, HTML and Markdown, from jinja2 templates (report/templates/).

Both are rendered from the same sections (``report.page.Section``). The HTML template
autoescapes every value; the only markup that comes from a value is the little Markdown
used in texts (`code` and **bold**), turned into tags after escaping (``inline_markdown``).
The HTML is self-contained: inline CSS (templates/report.css), images as base64 data URIs,
no scripts, no links outside the page.
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import jinja2

    from housing_mlops.report.page import Section

# Verdicts shown in colour in tables (CSS classes of the same names).
VERDICT_CLASSES = ("ok", "warn", "drift")


def format_value(value: Any) -> str:
    """A table cell or number in prose: 4 significant digits, – for missing."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if not np.isfinite(v):
            return "–"
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
            return f"{v:.2e}"
        return f"{v:.4g}"
    return str(value)


def inline_markdown(text: str) -> Any:
    """The little Markdown used in texts (`code`, **bold**) as HTML, escaped first."""
    from markupsafe import Markup, escape

    out = str(escape(text))  # every character of the text is escaped here, first
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    out = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", out)
    # Only the two tags added above are markup: the rest was escaped.
    return Markup(out)  # noqa: S704  # nosec B704


def markdown_cell(value: Any) -> str:
    return format_value(value).replace("|", "\\|").replace("\n", " ")


def _environment() -> jinja2.Environment:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("housing_mlops.report", "templates"),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",)),
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = format_value
    env.filters["inline_md"] = inline_markdown
    env.filters["md_cell"] = markdown_cell
    env.filters["base64"] = lambda png: base64.b64encode(png).decode("ascii")
    env.globals["VERDICT_CLASSES"] = VERDICT_CLASSES
    return env


def render_html(title: str, meta: list[str], sections: list[Section]) -> str:
    template = _environment().get_template("report.html")
    return template.render(title=title, meta=meta, sections=sections)


def render_markdown(title: str, meta: list[str], sections: list[Section], assets_dir: str) -> str:
    template = _environment().get_template("report.md")
    text = template.render(title=title, meta=meta, sections=sections, assets_dir=assets_dir)
    return text.rstrip("\n") + "\n"  # every block ends with a blank line; the file with one

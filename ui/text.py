"""User-chosen text shown as text wherever a page puts it into Markdown or a Plotly figure.

Streamlit renders Markdown (plus LaTeX, `:red[...]` / `:material/...:` directives and emoji
shortcodes) in `st.markdown`, captions, alerts, toasts, headers, widget labels, radio options,
expander and tab labels and `help=` tooltips. A display name, run or lesson name, a task name
from an uploaded CSV header or a note is chosen in someone's browser and shown in everyone's:
`md_text` makes it render as the characters it is, so `![x](http://host/t.png)` cannot make
every viewer's browser fetch an image. Plain-text places (selectbox and multiselect options,
data frames, code blocks) need no escaping and must not get it: they would show the backslashes.
Plotly figures draw a small HTML subset in their labels instead: `plot_text` is for those.
"""
from __future__ import annotations

import re

# U+2060 WORD JOINER: invisible, and neither a word character nor a space. Streamlit's
# renderer matches GFM autolink literals (`scheme://`, `www.`, `user@host`) and its own
# `:material/icon:` and `:emoji:` shortcodes on the text *after* backslash escapes are resolved
# (checked in Chromium: `\:material/star\:` still drew the icon), so escaping alone does not
# stop them; a word joiner after every `:`, after `www` and after `@` does.
WORD_JOINER = "\u2060"

# Every ASCII character that opens inline Markdown, HTML, an entity, LaTeX or a Streamlit
# directive (`-`, `.` and the like only matter at the start of a block: handled below); `_`
# only where it could open or close emphasis, not between two letters or digits
# (`shared_layers` stays as it is: CommonMark never emphasises inside a word with `_`).
_SPECIAL = re.compile(r"([\\`*{}\[\]()<>!|~$:#+&^=@]|(?<![^\W_])_|_(?![^\W_]))")
# A list item or rule at the start: `- x`, `---`, `1. x`, `12) x` (`*`, `+`, `#`, `>` and `=`
# are escaped everywhere already); `-0.5` or `0.5` start no block and stay as they are.
_LEADING_MARKER = re.compile(r"^(\s*)(?:(-)(?=[\s-]|$)|(\d+)([.)])(?=\s|$))")
_JOIN_AFTER = re.compile(r"(?i)(:|www(?=\.)|@)")


def md_text(value: object) -> str:
    """`value`'s text, to be put into Markdown and render as exactly that text: on one line
    (a name cannot start a heading, list or table row), every special character escaped and
    bare URLs, e-mail addresses and `:shortcodes:` not turned into links, icons or emoji."""
    text = " ".join(str(value).splitlines())
    text = _SPECIAL.sub(r"\\\1", _JOIN_AFTER.sub(r"\1" + WORD_JOINER, text))
    return _LEADING_MARKER.sub(
        lambda m: m.group(1) + ("\\-" if m.group(2) else f"{m.group(3)}\\{m.group(4)}"),
        text, count=1)


def md_code(value: object) -> str:
    """`value` as an inline code span (how run ids are shown) when it can be one: a code span
    renders its content literally, but a backtick or line break in it would end it, so such a
    value (an id typed into a URL, say) is shown as `md_text` instead, and so is one with a
    colon (Streamlit draws `:material/...:` icons before it parses Markdown)."""
    text = str(value)
    if any(c in text for c in "`:\r\n\u2028\u2029\x0b\x0c\x1c\x1d\x1e\x85"):
        return md_text(text)
    return f"`{text}`"


def md_lines(value: object) -> str:
    """Like `md_text`, but each line of `value` stays a line (a hard break between them):
    for messages of several lines, such as a ConfigError's list of fields, that quote what a
    browser sent. An escaped line cannot start or end a block (`#`, `>`, `=`, `|`, a list
    marker and backticks are all escaped), so it stays inside the one paragraph."""
    return "  \n".join(md_text(line) for line in str(value).splitlines())


# Plotly.js knows only a few named entities (no `&quot;`), so quotes are left as they are.
_PLOT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def plot_text(value: object) -> str:
    """`value`'s text for a Plotly figure (trace name, title, axis, tick or colour-bar label,
    annotation, hover text), drawn as exactly that text. plotly.js draws the tags `<a href>`,
    `<span style>`, `<b>`, `<br>`, `<sup>` ... in those strings and decodes entities in the
    text between them (`svg_text_utils.js`), so `&`, `<`, `>` become entities. A
    hovertemplate is filled in once, with no escape for `%{` (`lib/index.js`,
    TEMPLATE_STRING_REGEX): `%{` becomes `&#37;{`, which no placeholder matches and which is
    drawn as `%{`. Not for labels Plotly draws as plain text (parallel-coordinates ticks)."""
    return str(value).translate(_PLOT_ESCAPES).replace("%{", "&#37;{")

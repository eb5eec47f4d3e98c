"""`ui.text`: user-chosen text (names, notes, task names) shown as text in Markdown and Plotly."""
from __future__ import annotations

import re

import pytest

from ui.text import WORD_JOINER, md_code, md_lines, md_text, plot_text


def visible(markdown: str) -> str:
    """What a reader sees of `md_text`'s output: escapes resolved, word joiners invisible."""
    return re.sub(r"\\(.)", r"\1", markdown).replace(WORD_JOINER, "")


@pytest.mark.parametrize("char", list("\\`*{}[]()<>!|~$:#+&^=@"))
def test_every_special_character_is_backslash_escaped(char: str) -> None:
    assert md_text(f"a{char}b").replace(WORD_JOINER, "") == f"a\\{char}b"


def test_plain_text_is_unchanged() -> None:
    text = "Run 12 of lesson-3 by Ada Lovelace, 0.5 (weights/loss) 'ok'?"
    plain = "Run 12 of lesson-3 by Ada Lovelace 05 weights-loss ok"
    assert md_text(plain) == plain
    assert visible(md_text(text)) == text


def test_an_underscore_is_escaped_unless_inside_a_word() -> None:
    assert md_text("_i_ a_ _b __c__") == "\\_i\\_ a\\_ \\_b \\_\\_c\\_\\_"
    assert md_text("shared_layers per_task_2") == "shared_layers per_task_2"


def test_every_colon_is_escaped_and_joined_so_no_shortcode_or_icon_matches() -> None:
    # Streamlit finds `:material/x:` and `:emoji:` in the text after escapes are resolved
    # (checked in Chromium): a word joiner follows each colon
    out = md_text(":smile: :material/star: :red[r]")
    j = WORD_JOINER
    assert out == f"\\:{j}smile\\:{j} \\:{j}material/star\\:{j} \\:{j}red\\[r\\]"
    resolved = re.sub(r"\\(.)", r"\1", out)
    assert ":material/" not in out and not re.search(r":[\w/+-]+:", resolved)
    assert visible(out) == ":smile: :material/star: :red[r]"


def test_newlines_collapse_so_a_name_cannot_start_a_block() -> None:
    assert md_text("a\n# heading\r\n\n- item") == "a \\# heading  - item"
    assert "\n" not in md_text("x\u2028y\rz")


@pytest.mark.parametrize("name", ["- item", "+ item", "* item", "1. item", "12) item",
                                  "> quote", "# title", "  - item", "-", "1."])
def test_a_leading_block_marker_is_escaped(name: str) -> None:
    out = md_text(name)
    assert re.match(r"\s*(\\[-+*>#]|\d+\\[.)])", out), out
    assert visible(out) == name


def test_hyphens_inside_a_name_and_leading_numbers_stay() -> None:
    assert md_text("my-run - 2") == "my-run - 2"
    assert [md_text(v) for v in ("-0.5", "0.5", "12", "3x")] == ["-0.5", "0.5", "12", "3x"]
    assert md_text("---") == "\\---"


@pytest.mark.parametrize("url", ["http://evil.example/t.png", "HTTPS://e.example",
                                 "www.evil.example", "WWW.e.com", "a@b.com",
                                 "mailto:a@b.com", "ftp://x.y"])
def test_bare_urls_and_emails_get_a_word_joiner(url: str) -> None:
    out = md_text(f"see {url} now")
    # the autolink patterns no longer match the text Markdown resolves the escapes to
    resolved = re.sub(r"\\(.)", r"\1", out)
    assert not re.search(r"(?i)(https?|ftp)://|www\.|@\w", resolved), resolved
    assert visible(out) == f"see {url} now"


def test_the_review_example_is_shown_as_text() -> None:
    name = "![x](http://h/i.png) **b** $x$ :red[r] :material/star: <b>h</b> &amp; `c`"
    out = md_text(name)
    assert visible(out) == name
    for raw in ("![", "](", "**", "$x$", ":red[", "<b>", " &amp;", "`c`"):
        assert raw not in out


def test_non_strings_are_shown_as_their_text() -> None:
    assert md_text(3) == "3"
    assert md_text(None) == "None"


def test_md_code_keeps_a_plain_id_a_code_span() -> None:
    assert md_code("20261202-abc_1") == "`20261202-abc_1`"
    assert md_code("![x](h/i.png) $x$") == "`![x](h/i.png) $x$`"


def test_md_code_falls_back_to_text_for_a_colon_an_icon_shortcode_needs() -> None:
    assert md_code(":material/star: x") == md_text(":material/star: x")
    assert md_code("http://h/i.png") == md_text("http://h/i.png")


def test_md_code_falls_back_to_text_when_a_backtick_or_newline_would_end_the_span() -> None:
    assert md_code("a`![x](http://h/i.png)`") == md_text("a`![x](http://h/i.png)`")
    assert md_code("a\n# b") == "a \\# b"


def test_md_lines_keeps_each_line_as_a_line_of_text() -> None:
    message = "invalid config:\n  - tasks.0.name: got '![x](http://h/i.png)'\n===\n# h"
    out = md_lines(message)
    assert out.split("  \n") == [md_text(line) for line in message.splitlines()]
    assert out.split("  \n")[1].startswith("  \\- tasks")
    assert out.split("  \n")[2] == "\\=\\=\\="


# ---------------------------------------------------------------- plot_text (Plotly figures)

# What plotly.js does with a label (src/lib/svg_text_utils.js, convertToTspans): split it on
# tags, draw the tags it knows (b, i, em, s, u, sup, sub, span style, a href, br) and decode
# the entities in the text between them (numeric ones and mu, amp, lt, gt, nbsp, times,
# plusmn, deg only); a hovertemplate is first filled in once with TEMPLATE_STRING_REGEX
# (src/lib/index.js), which has no escape syntax.
PLOTLY_TAG = re.compile(r"(<[^<>]*>)")
PLOTLY_ENTITY = re.compile(r"&(#\d+|#x[\da-fA-F]+|[a-z]+);")
PLOTLY_NAMED = {"mu": "\u03bc", "amp": "&", "lt": "<", "gt": ">", "nbsp": "\xa0",
                "times": "\xd7", "plusmn": "\xb1", "deg": "\xb0"}
PLOTLY_TEMPLATE = re.compile(r"%{([^\s%{}:]*)([:|\|][^}]*)?}")


def plotly_drawn(label: str) -> str:
    """The characters plotly.js draws for `label`; fails if it would draw a tag."""
    assert not PLOTLY_TAG.search(label), label

    def entity(m: re.Match[str]) -> str:
        code = m.group(1)
        if code.startswith("#"):
            return chr(int(code[2:], 16) if code[1] == "x" else int(code[1:]))
        return PLOTLY_NAMED.get(code, m.group(0))

    return PLOTLY_ENTITY.sub(entity, label)


EVIL = ('<a href="http://evil.example/">x</a><span style="font-size:99px">big</span>%{x}'
        "<br><b>b</b><sup>2</sup>")


def test_plot_text_draws_tags_as_the_characters_they_are() -> None:
    out = plot_text(EVIL)
    assert "<" not in out and ">" not in out
    assert plotly_drawn(out) == EVIL


def test_plot_text_escapes_ampersand_first_so_entities_stay_text() -> None:
    assert plot_text("&lt;b&gt; &amp; &#60; &mu;") == (
        "&amp;lt;b&amp;gt; &amp;amp; &amp;#60; &amp;mu;")
    assert plotly_drawn(plot_text("&lt;b&gt; &#60; &mu;")) == "&lt;b&gt; &#60; &mu;"


def test_plot_text_keeps_a_hovertemplate_placeholder_from_matching() -> None:
    for name in ("%{x}", "%{y:.2f}", "a %{customdata[0]} b", "%{fullData.name}"):
        out = plot_text(name)
        template = f"run {out}: %{{y}}"
        assert [m.group(0) for m in PLOTLY_TEMPLATE.finditer(template)] == ["%{y}"]
        assert plotly_drawn(out) == name


def test_plot_text_leaves_plain_text_quotes_and_percent_alone() -> None:
    # Plotly decodes no &quot;: a quote escaped by html.escape would show as "&quot;"
    text = "Run 12 of lesson-3 by Ada O'Neill, \"w\" 50% {x} $x$ · w_task ±"
    assert plot_text(text) == text


def test_plot_text_of_non_strings_is_their_text() -> None:
    assert plot_text(3) == "3"
    assert plot_text(None) == "None"

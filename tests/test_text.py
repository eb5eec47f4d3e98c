"""`ui.text.md_text`: user-chosen text (names, notes, task names) shown as text in Markdown."""
from __future__ import annotations

import re

import pytest

from ui.text import WORD_JOINER, md_code, md_lines, md_text


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

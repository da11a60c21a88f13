"""Rewrite the generated section of a doc in place, keeping the hand-written text around it
(shared by the benchmark scripts that write into docs/)."""

from __future__ import annotations

from pathlib import Path

END = "<!-- END GENERATED -->"


def write_section(doc: Path, script: str, title: str, section: list[str]) -> None:
    """Replace the block that ``script`` generated in ``doc``, or create the doc around it."""
    begin = f"<!-- BEGIN GENERATED: {script} -->"
    body = "\n".join([begin, "", *section, END])
    if doc.exists() and begin in (text := doc.read_text()) and END in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(END)
        doc.write_text(head + body + tail)
        return
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(f"# {title}\n\n{body}\n")

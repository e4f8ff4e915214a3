"""Diagnostics: what went wrong, where, and how to fix it, in words a person can act on."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Span:
    """A 1-based, end-exclusive region of the program text."""

    line: int
    column: int
    end_line: int
    end_column: int


@dataclass(frozen=True)
class Diagnostic:
    message: str
    line: int
    column: int
    end_line: int
    end_column: int
    hint: str | None = None
    code: str = "error"
    severity: str = "error"

    @classmethod
    def at(
        cls, span: Span, message: str, *, hint: str | None = None, code: str = "error", severity: str = "error"
    ) -> Diagnostic:
        return cls(message, span.line, span.column, span.end_line, span.end_column, hint, code, severity)

    def to_dict(self) -> dict[str, object]:
        # Not dataclasses.asdict: it deep-copies every field, and a run converts its plan's warnings each time.
        return {"message": self.message, "line": self.line, "column": self.column, "end_line": self.end_line,
                "end_column": self.end_column, "hint": self.hint, "code": self.code, "severity": self.severity}

    def render(self, source: str, filename: str = "<program>") -> str:
        """Compiler-style text: ``file:line:col: error: message``, the line, and a caret under the place."""
        return self.render_lines(source.splitlines(), filename)

    def render_lines(self, lines: Sequence[str], filename: str = "<program>") -> str:
        """``render`` over the source already split into lines (for many diagnostics of one source)."""
        head = f"{filename}:{self.line}:{self.column}: {self.severity}: {self.message}"
        if self.hint:
            head += f"; {self.hint}"
        if not 1 <= self.line <= len(lines):
            return head
        text = lines[self.line - 1].replace("\t", " ")
        width = max(1, (self.end_column if self.end_line == self.line else len(text) + 1) - self.column)
        start = self.column - 1
        if len(text) > 100:
            # Show a window around the place, not a whole minified line.
            lo = max(0, start - 40)
            text = ("…" if lo else "") + text[lo : lo + 100] + ("…" if lo + 100 < len(text) else "")
            start = start - lo + (1 if lo else 0)
            width = min(width, 100 - (start - (1 if lo else 0)))
        caret = " " * start + "^" * max(1, width)
        return f"{head}\n    {text}\n    {caret}"


class ProgramError(Exception):
    """The only exception the language raises for a bad program: it carries every diagnostic found."""

    def __init__(self, diagnostics: Sequence[Diagnostic], source: str = "") -> None:
        self.diagnostics = list(diagnostics)
        self.source = source
        super().__init__(self.render())

    def render(self, filename: str = "<program>") -> str:
        lines = self.source.splitlines()
        return "\n".join(d.render_lines(lines, filename) for d in self.diagnostics)


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A hint naming the closest candidate, case-insensitively, when one is close enough."""
    pool = sorted(set(candidates))
    by_lower = {c.lower(): c for c in pool}
    match = difflib.get_close_matches(word.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean '{by_lower[match[0]]}'?" if match else None

"""Lark's syntax errors in words a person can act on: what was found, what would fit there, and,
for a bracket never closed, where it was opened; and where the next statement starts."""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterable
from functools import lru_cache

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from . import lalr
from .errors import Diagnostic, Span
from .lalr import CLOSE, OPEN, SpanFn, lark_parser

# Lark's name for the end of the input: a token type, not a terminal of the grammar.
END = "$END"

_WORDS = {
    "NAME": "a name", "QUALNAME": "a module name", "NUMBER": "a number", "STRING": "a string",
    "_NL": "a new line", "COMMENT": "a comment",
}
_OPERATORS = frozenset({"ADD_OP", "MUL_OP", "POW", "OR", "AND", "XOR", "IF", "IN", "EQ", "NE", "LT", "LE", "GT", "GE"})
_EXPR_START = frozenset({"LPAR", "LSQB", "LBRACE", "QUALNAME", "NAME", "NUMBER", "STRING", "TRUE", "FALSE", "NONE",
                         "NOT", "ADD_OP"})
_CLOSER = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
_OPENER = {close: open_ for open_, close in _CLOSER.items()}

# Every terminal name the parser's Python code relies on; a test checks each is in the grammar.
TERMINALS_USED = (lalr.TERMINALS_USED | frozenset(_WORDS) | _OPERATORS | _EXPR_START
                  | {"STRING", "COMMENT", "_NL", "NAME", "ASSIGN", "EQ", "COMMA"})


def _describe(term: str) -> str:
    if term == END:
        return "the end of the program"
    if term in _WORDS:
        return _WORDS[term]
    try:
        pattern = lark_parser().get_terminal(term).pattern
    except KeyError:
        return term.lower()
    return f"'{pattern.value}'" if pattern.type == "str" else term.lower()


def _expected(names: Iterable[str]) -> str:
    names = set(names) - {"COMMENT"}
    expression = {"NAME", "NUMBER", "STRING"} <= names
    if expression:
        # Ten ways to start an expression read better as one word.
        names -= _EXPR_START
    ops = names & _OPERATORS
    words = sorted({_describe(n) for n in names - ops})
    if ops:
        words.append("an operator")
    if expression:
        words.insert(0, "an expression")
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _token_words(tok: Token) -> str:
    if tok.type == END:
        return "end of program"
    if tok.type == "_NL":
        return "end of line"
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type == "NUMBER":
        return f"number {tok}"
    if tok.type == "STRING":
        return f"string {tok}"
    return f"'{tok}'"


def _acceptable(e: UnexpectedInput, table: Iterable[str]) -> set[str]:
    """The tokens the parser would really take here. The LALR table's set for a state is wider:
    merged states share lookaheads, so it lists ')' at the top level or a new line inside a call."""
    parser = getattr(e, "interactive_parser", None)
    return set(parser.accepts()) if parser is not None else set(table)


def _end_of_text(text: str) -> tuple[int, int, int]:
    """Offset, line and column just after the last thing written (not past trailing newlines)."""
    end = len(text.rstrip())
    line = text.count("\n", 0, end) + 1
    return end, line, end - (text.rfind("\n", 0, end) + 1) + 1


def syntax_diagnostic(e: UnexpectedInput, text: str, pos_span: SpanFn | None) -> Diagnostic:
    """The error where the parser noticed it, with what would have fitted there."""

    def at(line: int, column: int, start: int, length: int) -> Span:
        if pos_span is not None:
            return pos_span(start, start + length)
        return Span(line, column, line, column + length)

    def expecting(names: Iterable[str]) -> str | None:
        expected = _expected(_acceptable(e, names))
        return f"expected {expected}" if expected else None

    if isinstance(e, UnexpectedCharacters):
        pos = e.pos_in_stream or 0
        ch = text[pos] if pos < len(text) else ""
        span = at(e.line, e.column, pos, 1)
        if ch in "'\"":
            return Diagnostic.at(span, "unterminated string", hint=f"close it with {ch} on the same line",
                                 code="syntax")
        return Diagnostic.at(span, f"unexpected character {ch!r}", hint=expecting(e.allowed or ()), code="syntax")
    if isinstance(e, UnexpectedToken):
        tok = e.token
        hint = expecting(e.expected or ())
        if tok.type == END:
            end, line, col = _end_of_text(text)
            return Diagnostic.at(at(line, col, end, 1), "unexpected end of program", hint=hint, code="syntax")
        start = tok.start_pos or 0
        length = max(1, (tok.end_pos or start + 1) - start) if tok.type != "_NL" else 1
        span = at(tok.line or 1, tok.column or 1, start, length)
        if tok.type == "_NL":
            return Diagnostic.at(span, "unexpected end of line", hint=hint, code="syntax")
        return Diagnostic.at(span, f"unexpected {_token_words(tok)}", hint=hint, code="syntax")
    assert isinstance(e, UnexpectedEOF)
    end = len(text)
    return Diagnostic.at(at(1, 1, end, 1), "unexpected end of program", code="syntax")


# -- brackets never closed, and where statements start again ----------------------------------------


@lru_cache(maxsize=1)
def _scanner() -> re.Pattern[str]:
    """Strings, comments, brackets and newlines, by the grammar's own patterns; nothing else can hold
    or be a bracket or a line end."""
    lark = lark_parser()

    def group(name: str, key: str | None = None) -> str:
        return f"(?P<{key or name}>{lark.get_terminal(name).pattern.to_regexp()})"

    parts = [group("STRING"), group("COMMENT"), group("_NL", "NL"), *(group(n) for n in sorted(OPEN | CLOSE))]
    # A quote STRING cannot close before the line ends: the lexer stops there; here the rest of the
    # line is that broken string, whose brackets are no brackets.
    parts.append(r"(?P<BROKEN>['\"][^\r\n]*)")
    return re.compile("|".join(parts))


@lru_cache(maxsize=1)
def _line_starts() -> tuple[re.Pattern[str], frozenset[str]]:
    """``NAME =`` (not ``==``) at the start of a line; and the last characters after which a line
    goes on to the next: ',', an opening bracket, or nothing at all."""
    lark = lark_parser()

    def rx(name: str) -> str:
        return lark.get_terminal(name).pattern.to_regexp()

    def literal(name: str) -> str:
        return str(lark.get_terminal(name).pattern.value)

    statement = re.compile(rf"(?:{rx('NAME')})[ \t]*(?!{rx('EQ')}){rx('ASSIGN')}")
    return statement, frozenset({"", literal("COMMA"), *(literal(n) for n in OPEN)})


class Brackets:
    """How the brackets of the whole text pair up, and so where statements may end.

    The post-lexer drops newlines inside brackets, so a bracket left open swallows the lines after
    it and the parser notices only there; a look at the whole text tells a bracket that is never
    closed from one closed on a later line. A statement may end at a newline outside every bracket
    that is closed; one never closed ends its statement at the end of its line.

    A line that starts with ``NAME=`` (VisProg's one statement a line) and closes no more brackets
    than it opens, after a line that does not go on (it ends with no ',' and no opening bracket),
    starts a statement: a bracket still open there is never closed, even if a stray closer further
    down would pair with it."""

    def __init__(self, text: str) -> None:
        scanner = _scanner()
        statement, goes_on = _line_starts()
        stack: list[tuple[str, int]] = []
        waiting = dict.fromkeys(OPEN, 0)
        closed: dict[int, int] = {}
        events: list[tuple[str, int, int]] = []
        pos = line_start = 0
        code_end: int | None = None
        while (m := scanner.search(text, pos)) is not None:
            kind, pos = m.lastgroup or "", m.end()
            if kind in OPEN:
                stack.append((kind, m.start()))
                waiting[kind] += 1
                events.append((kind, m.start(), m.end()))
            elif kind in CLOSE:
                events.append((kind, m.start(), m.end()))
                opener = _OPENER[kind]
                if not waiting[opener]:
                    continue  # closes nothing: the parser will say so
                # Brackets opened after its partner and still open are never closed.
                while True:
                    k, at = stack.pop()
                    waiting[k] -= 1
                    if k == opener:
                        closed[at] = m.start()
                        break
            elif kind == "NL":
                events.append((kind, m.start(), m.end()))
                last = text[line_start : m.start() if code_end is None else code_end].rstrip()[-1:]
                line_start, code_end = m.end(), None
                if (stack and last not in goes_on and statement.match(text, m.end())
                        and not _closes_more(text, m.end())):
                    stack.clear()
                    waiting = dict.fromkeys(OPEN, 0)
            elif kind == "COMMENT":
                code_end = m.start()
            elif kind == "BROKEN":
                pos = _string_goes_on(text, m)
        self._closed = closed
        self._text = text
        self._newlines: list[int] | None = None
        self._brackets = [(kind, start) for kind, start, _ in events if kind != "NL"]
        self._offsets = [start for _, start in self._brackets]
        closers = set(closed.values())
        depth = 0
        self._starts: list[int] = []
        self._ends: list[int] = []
        for kind, start, end in events:
            if kind in OPEN and start in closed:
                depth += 1
            elif kind in CLOSE and start in closers:
                depth -= 1
            elif kind == "NL" and depth == 0:
                self._starts.append(start)
                self._ends.append(end)

    def never_closed(self, offset: int) -> bool:
        return offset not in self._closed

    def open_at(self, start: int, end: int) -> list[Token]:
        """The brackets the parser, reading from ``start``, has open just before ``end``: as the
        post-lexer counts them, any closer closing the last one open."""
        stack: list[tuple[str, int]] = []
        for kind, at in self._brackets[bisect_left(self._offsets, start) : bisect_left(self._offsets, end)]:
            if kind in OPEN:
                stack.append((kind, at))
            elif stack:
                stack.pop()
        return [Token(kind, self._text[at], at, *self.position(at)) for kind, at in stack]

    def position(self, offset: int) -> tuple[int, int]:
        """Line and column of ``offset``."""
        newlines = self._lines()
        before = bisect_left(newlines, offset)
        return before + 1, (offset - newlines[before - 1] if before else offset + 1)

    def offset(self, line: int, column: int) -> int:
        """The offset at ``line`` and ``column``."""
        newlines = self._lines()
        return (newlines[line - 2] + 1 if 1 < line <= len(newlines) + 1 else 0) + column - 1

    def _lines(self) -> list[int]:
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self._text)]
        return self._newlines

    def next_statement(self, offset: int) -> int | None:
        """Where the first statement that starts after a line end at or after ``offset`` begins."""
        i = bisect_left(self._starts, offset)
        return self._ends[i] if i < len(self._ends) else None


def _closes_more(text: str, start: int) -> bool:
    """Whether the line at ``start`` closes a bracket it did not open."""
    depth = 0
    for m in _scanner().finditer(text, start):
        kind = m.lastgroup
        if kind == "NL" or kind == "BROKEN":
            break
        if kind in OPEN:
            depth += 1
        elif kind in CLOSE:
            depth -= 1
            if depth < 0:
                return True
    return False


# The rest of a string up to its closing quote, as STRING in the grammar reads it.
_REST_OF_STRING = {q: re.compile(rf"(?:[^{q}\\\r\n]|\\.)*{q}") for q in "'\""}
_LINE_END = re.compile(r"\r?\n")


def _string_goes_on(text: str, broken: re.Match[str]) -> int:
    """Where scanning goes on after a string left open at the end of its line. If the next line
    closes it, and what follows the quote there is well formed, the string spans the two lines
    (one statement); else it ends with its line."""
    eol = broken.end()
    nl = _LINE_END.match(text, eol)
    if nl is None:
        return eol
    rest = _REST_OF_STRING[broken.group()[0]].match(text, nl.end())
    if rest is None:
        return eol
    line_end = _LINE_END.search(text, rest.end())
    after = text[rest.end() : line_end.start() if line_end else len(text)]
    if any(m.lastgroup == "BROKEN" for m in _scanner().finditer(after)):
        return eol
    return rest.end()


def _place(e: UnexpectedInput, text: str, end: int, brackets: Brackets) -> tuple[int, int]:
    """Line and offset where the parser noticed the error. The end of a statement parsed on its own
    (``end`` is where the next one starts) is noticed, as a parse of the whole text would notice
    it, on the next line."""
    if isinstance(e, UnexpectedToken):
        if e.token.type != END:
            return e.token.line or 1, e.token.start_pos or 0
        if end < len(text):
            return brackets.position(end)[0], end
        return _end_of_text(text)[1], len(text)
    if isinstance(e, UnexpectedCharacters):
        return e.line, e.pos_in_stream or 0
    return text.count("\n") + 1, len(text)


def describe(e: UnexpectedInput, text: str, start: int, end: int,
             brackets: Brackets) -> tuple[list[Diagnostic], int | None]:
    """The diagnostics for one syntax error in ``text[start:end]``, and the offset where parsing may
    start again (at the next statement), or None when nothing follows.

    A bracket still open at the error, never closed in the whole text and opened on an earlier line
    than the error, is the mistake: its newline was dropped and the parser noticed lines later. On
    the error's own line the parser's words already point at the place (``expected ')'``)."""
    line, offset = _place(e, text, end, brackets)
    lost = [t for t in brackets.open_at(start, offset)
            if (t.line or 1) < line and brackets.never_closed(t.start_pos or 0)]
    if not lost:
        # Up to ``end`` only: the end of a statement parsed on its own is that statement's end.
        return [syntax_diagnostic(e, text[:end], None)], brackets.next_statement(offset)
    first = [t for t in lost if t.line == lost[0].line]
    diagnostics = [
        Diagnostic.at(
            Span(t.line or 1, t.column or 1, t.line or 1, (t.column or 1) + len(t)),
            f"'{t}' at {t.line}:{t.column} is never closed",
            hint=f"close it with {_describe(_CLOSER[t.type])}", code="syntax",
        )
        for t in first
    ]
    return diagnostics, brackets.next_statement(first[0].start_pos or 0)

"""Strict FHIRPath syntax: is a text an expression, all of it? (https://hl7.org/fhirpath/N1/grammar.html)

fhirpathpy (every FHIRPath evaluation of the server: invariants.py, profiles.py, the SDC
expressions of clinical/) parses with an error listener that does nothing and stops at the first
token it cannot use, so `sum(` or `a b` or `code = 'x' and` compile and then run as a shorter
expression, giving a plausible wrong value. Every expression the server compiles is parsed here
first with the same grammar, collecting errors and requiring the whole text to be used.
"""

from __future__ import annotations

from typing import Any

from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser


class _Collect(ErrorListener):
    def __init__(self) -> None:
        self.errors: list[str] = []

    def syntaxError(
        self, recognizer: Any, offending: Any, line: int, column: int, msg: str, e: Any
    ) -> None:
        msg = msg.split(" expecting ")[0].replace("mismatched input '<EOF>'", "it ends too early")
        self.errors.append(f"at character {column + 1}: {msg}")


def syntax_error(text: str) -> str | None:
    """Why `text` is not a FHIRPath expression ("it does not parse (...)"), or None."""
    collect = _Collect()
    lexer = FHIRPathLexer(InputStream(text))
    lexer.removeErrorListeners()
    lexer.addErrorListener(collect)
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(collect)
    parser.expression()
    if not collect.errors and tokens.LA(1) != Token.EOF:
        extra = tokens.LT(1)
        collect.errors.append(f"at character {extra.column + 1}: unexpected {extra.text!r}")
    if not collect.errors:
        return None
    return f"it does not parse ({collect.errors[0]})"

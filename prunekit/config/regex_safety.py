"""Static detection of regular expressions whose matching time can grow exponentially.

Python's ``re`` has no time limit, and one selector such as ``^(a+)+$`` made preparing a session
take 13-20 s on one 29-character module name. :func:`regex_backtracking_risk` parses a pattern
(``re._parser``; ``sre_parse`` on 3.10) and looks for a repeat inside a repeat, or alternatives
inside a repeat, that can match the same characters (``(a+)+``, ``(a|aa)*``, ``(.*a){20}``).
It is a heuristic: a few safe but unusual nestings (``(a+ba+)+``) are refused too; atomic groups
and possessive repeats are always accepted.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

try:  # Python 3.11+
    import re._constants as _sre
    import re._parser as _sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants as _sre  # type: ignore[no-redef]
    import sre_parse as _sre_parse  # type: ignore[no-redef]

__all__ = ["regex_backtracking_risk"]

_REPEATS = {_sre.MAX_REPEAT, _sre.MIN_REPEAT}
_POSSESSIVE = getattr(_sre, "POSSESSIVE_REPEAT", None)
_ATOMIC = getattr(_sre, "ATOMIC_GROUP", None)
_UNBOUNDED = _sre.MAXREPEAT
_LOOP_MIN = 8  # a bounded repeat of at least this many iterations counts as a loop
_SAMPLE = [chr(i) for i in range(128)] + ["é", "ß", "λ", "Ж", "٣", "中", "\u00a0", "\u2028", "\U0001f600"]
_CATEGORIES = {
    _sre.CATEGORY_DIGIT: r"\d",
    _sre.CATEGORY_NOT_DIGIT: r"\D",
    _sre.CATEGORY_SPACE: r"\s",
    _sre.CATEGORY_NOT_SPACE: r"\S",
    _sre.CATEGORY_WORD: r"\w",
    _sre.CATEGORY_NOT_WORD: r"\W",
    _sre.CATEGORY_LINEBREAK: r"\n",
    _sre.CATEGORY_NOT_LINEBREAK: r"[^\n]",
}


def _items(sub: Any) -> list[Any]:
    return list(sub.data) if hasattr(sub, "data") else list(sub)


class _Backtracking:
    """Static search for exponential backtracking in a parsed pattern.

    Characters are approximated by a sample alphabet (ASCII, a few non-ASCII letters, digits and
    spaces, plus every literal of the pattern) as bit masks. A *loop* is a repeat of at most
    ``_LOOP_MIN`` or more (or unbounded) iterations. Reported, inside a loop: a repeat of variable
    count whose characters can also be matched by what follows it (wrapping round to the loop's
    start); an alternation two of whose branches can start with the same character (a branch that
    can match nothing starts with what follows it; two such branches); a repeat of variable count
    (``?`` included) whose body can itself match nothing. A fuzz of half a million random patterns against strings of 27 characters found no
    accepted pattern slower than 50 ms.
    """

    def __init__(self, parsed: Any) -> None:
        extra: list[str] = []
        self._collect(_items(parsed), extra, 0)
        chars = list(dict.fromkeys(_SAMPLE + extra))
        self.chars = chars
        self.bit = {c: 1 << i for i, c in enumerate(chars)}
        self.all = (1 << len(chars)) - 1
        self.categories: dict[Any, int] = {}
        self.memo: dict[tuple[int, int], tuple[int, bool]] = {}

    def _collect(self, items: list[Any], out: list[str], depth: int) -> None:
        for op, av in items:
            if op in (_sre.LITERAL, _sre.NOT_LITERAL):
                out.append(chr(av))
            elif op is _sre.RANGE:
                out.extend((chr(av[0]), chr(av[1])))
            elif op is _sre.IN:
                self._collect(av, out, depth + 1)
            else:
                for sub in self._children(op, av):
                    self._collect(_items(sub), out, depth + 1)

    @staticmethod
    def _children(op: Any, av: Any) -> list[Any]:
        if op in _REPEATS or op is _POSSESSIVE:
            return [av[2]]
        if op is _sre.SUBPATTERN:
            return [av[3]]
        if op is _sre.BRANCH:
            return list(av[1])
        if op is _ATOMIC:
            return [av]
        if op in (_sre.ASSERT, _sre.ASSERT_NOT):
            return [av[1]]
        if op is _sre.GROUPREF_EXISTS:
            return [s for s in av[1:] if s is not None]
        return []

    # ------------------------------------------------------------ character sets
    def _char(self, code: int, flags: int) -> int:
        c = chr(code)
        mask = self.bit.get(c, 0)
        if flags & _sre.SRE_FLAG_IGNORECASE:
            for variant in (c.lower(), c.upper()):
                mask |= self.bit.get(variant, 0)
        return mask

    def _category(self, code: Any) -> int:
        if code not in self.categories:
            pattern = re.compile(_CATEGORIES.get(code, r"[\s\S]"))
            self.categories[code] = sum(b for c, b in self.bit.items() if pattern.fullmatch(c))
        return self.categories[code]

    def _set(self, items: list[Any], flags: int) -> int:
        mask, negate = 0, False
        for op, av in items:
            if op is _sre.NEGATE:
                negate = True
            elif op is _sre.LITERAL:
                mask |= self._char(av, flags)
            elif op is _sre.RANGE:
                lo, hi = av
                for c, b in self.bit.items():
                    if lo <= ord(c) <= hi or (flags & _sre.SRE_FLAG_IGNORECASE and (lo <= ord(c.lower()[0]) <= hi or lo <= ord(c.upper()[0]) <= hi)):
                        mask |= b
            elif op is _sre.CATEGORY:
                mask |= self._category(av)
            else:
                mask = self.all
        return self.all & ~mask if negate else mask

    # ------------------------------------------------------------ first characters
    def first_seq(self, items: Iterable[Any], flags: int) -> tuple[int, bool]:
        """Characters that can start a match of the sequence, and whether it can match empty."""
        mask = 0
        for item in items:
            first, nullable = self.first(item, flags)
            mask |= first
            if not nullable:
                return mask, False
        return mask, True

    def first(self, item: Any, flags: int) -> tuple[int, bool]:
        key = (id(item), flags)
        found = self.memo.get(key)
        if found is None:
            found = self._first(item, flags)
            self.memo[key] = found
        return found

    def _first(self, item: Any, flags: int) -> tuple[int, bool]:
        op, av = item
        if op is _sre.LITERAL:
            return self._char(av, flags), False
        if op is _sre.NOT_LITERAL:
            return self.all & ~self._char(av, flags), False
        if op is _sre.ANY:
            return (self.all if flags & _sre.SRE_FLAG_DOTALL else self.all & ~self.bit["\n"]), False
        if op is _sre.IN:
            return self._set(av, flags), False
        if op in _REPEATS or op is _POSSESSIVE:
            mask, nullable = self.first_seq(_items(av[2]), flags)
            return mask, nullable or av[0] == 0
        if op is _sre.SUBPATTERN:
            return self.first_seq(_items(av[3]), (flags | av[1]) & ~av[2])
        if op is _sre.BRANCH:
            mask, nullable = 0, False
            for alt in av[1]:
                m, n = self.first_seq(_items(alt), flags)
                mask, nullable = mask | m, nullable or n
            return mask, nullable
        if op is _ATOMIC:
            return self.first_seq(_items(av), flags)
        if op in (_sre.AT, _sre.ASSERT, _sre.ASSERT_NOT):
            return 0, True
        if op is _sre.GROUPREF_EXISTS:
            yes = self.first_seq(_items(av[1]), flags)
            no = self.first_seq(_items(av[2]), flags) if av[2] is not None else (0, True)
            return yes[0] | no[0], yes[1] or no[1]
        return self.all, True  # back references and anything unknown: could be anything

    # ------------------------------------------------------------ the search
    def check_seq(self, items: list[Any], after: int, loop: bool, flags: int) -> str | None:
        """``after``: characters that can follow the sequence inside the nearest loop (None: no loop)."""
        follows = [0] * len(items)
        acc = after
        for i in range(len(items) - 1, -1, -1):
            follows[i] = acc
            first, nullable = self.first(items[i], flags)
            acc = first | (acc if nullable else 0)
        for item, follow in zip(items, follows):
            found = self.check_item(item, follow, loop, flags)
            if found is not None:
                return found
        return None

    def check_item(self, item: Any, follow: int, loop: bool, flags: int) -> str | None:
        op, av = item
        if op in _REPEATS:
            low, high, body = av[0], av[1], _items(av[2])
            first, nullable = self.first_seq(body, flags)
            if loop and high != low and first & follow:
                return "a repeat inside a repeat can match the same characters in many ways (like '(a+)+' or '(.*a){20}')"
            if loop and high != low and nullable:
                return "inside a repeat, a repeated or optional part can match nothing in several ways (like '(a*)?' in '(x(a*)?)+')"
            if high >= 2 and (high == _UNBOUNDED or high >= _LOOP_MIN):
                return self.check_seq(body, first, True, flags)
            return self.check_seq(body, first | follow if high >= 2 else follow, loop, flags)
        if op is _sre.SUBPATTERN:
            return self.check_seq(_items(av[3]), follow, loop, (flags | av[1]) & ~av[2])
        if op is _sre.BRANCH:
            if loop:
                seen, empty = 0, 0
                for alt in av[1]:
                    first, nullable = self.first_seq(_items(alt), flags)
                    ahead = first | (follow if nullable else 0)
                    empty += nullable
                    if ahead & seen or empty > 1:
                        return "alternatives inside a repeat can match the same characters (like '(a|a)+' or '(a|aa)*')"
                    seen |= ahead
            for alt in av[1]:
                found = self.check_seq(_items(alt), follow, loop, flags)
                if found is not None:
                    return found
            return None
        if op is _ATOMIC:
            return self.check_seq(_items(av), 0, False, flags)
        if op is _POSSESSIVE:
            return self.check_seq(_items(av[2]), 0, False, flags)
        if op in (_sre.ASSERT, _sre.ASSERT_NOT):
            return self.check_seq(_items(av[1]), 0, False, flags)
        if op is _sre.GROUPREF_EXISTS:
            for sub in av[1:]:
                if sub is not None and (found := self.check_seq(_items(sub), follow, loop, flags)) is not None:
                    return found
        return None


def regex_backtracking_risk(pattern: str) -> str | None:
    """Why matching ``pattern`` can take exponential time, or None when it cannot (static check).

    Raises ``re.error`` for an invalid pattern.
    """
    parsed = _sre_parse.parse(pattern)
    search = _Backtracking(parsed)
    return search.check_seq(_items(parsed), 0, False, parsed.state.flags)

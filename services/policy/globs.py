r"""KubeArmor ``matchPatterns`` are path globs (``/etc/*hado?``, ``/**/*.conf``); rules carry regexes.

Why globs although the wire contract says "regular expressions": KubeArmor's daemon only *compiles*
a pattern as a Go regexp (to drop ones that do not compile) and then matches it with Go's
``filepath.Match`` (a glob), and its AppArmor enforcer writes the pattern into the profile, where it
is an AppArmor glob. Every pattern in KubeArmor's examples is a glob (``/**/*.conf`` is not even a
valid regexp). So Bulwark reads patterns as AppArmor globs, the superset of both:
``*`` any characters but ``/``; ``**`` any characters including ``/``; ``?`` one character but
``/``; ``[abc]``/``[^abc]``/``[!abc]`` a character class; ``{a,b}`` either; ``\x`` a literal x.
The whole resource must match: the regex is meant for ``re.fullmatch``, as the shared matcher does.
"""
from __future__ import annotations

import re

__all__ = ["glob_to_regex"]


def _char_class(glob: str, i: int) -> tuple[str, int] | None:
    end = glob.find("]", i + 2)
    if end < 0:
        return None
    body = glob[i + 1:end]
    if body.startswith("!"):
        body = "^" + body[1:]
    return "[" + body.replace("\\", "\\\\") + "]", end + 1


def glob_to_regex(glob: str) -> str:
    """The regular expression (for ``re.fullmatch``) that matches what ``glob`` matches."""
    out: list[str] = []
    depth = 0
    i = 0
    while i < len(glob):
        c = glob[i]
        if c == "*":
            if glob.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            cls = _char_class(glob, i)
            if cls:
                out.append(cls[0])
                i = cls[1]
                continue
            out.append(re.escape(c))
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}" and depth:
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        elif c == "\\" and i + 1 < len(glob):
            out.append(re.escape(glob[i + 1]))
            i += 2
            continue
        else:
            out.append(re.escape(c))
        i += 1
    out.extend(")" * depth)
    return "".join(out)

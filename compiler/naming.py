"""XPK workload names: the rule xpk enforces, and a deterministic way to derive a valid name.

xpk (a Kubernetes JobSet underneath) accepts workload names matching `[a-z]([-a-z0-9]*[a-z0-9])?`
of at most 40 characters, and at most 28 on super-slicing accelerator types (xpk appends its own
suffixes there). The limit lives here, in one place, instead of in a shell-script comment: rule
DC160/DC161 check a spec's name with it, and the resolver and the ablation use `workload_name` to
build the names of stage workloads (`-topk`, `-train`) and ablation cells.
"""

from __future__ import annotations

import hashlib
import re

WORKLOAD_NAME_PATTERN = r"[a-z]([-a-z0-9]*[a-z0-9])?"
MAX_WORKLOAD_NAME = 40
MAX_SUPER_SLICING_NAME = 28
HASH_CHARS = 6

_VALID = re.compile(rf"\A{WORKLOAD_NAME_PATTERN}\Z")
_BAD_CHARS = re.compile(r"[^-a-z0-9]+")
_DASHES = re.compile(r"-{2,}")

# The workloads one spec becomes, by mode: the suffix each stage appends to the spec's name.
STAGE_SUFFIXES: dict[str, tuple[str, ...]] = {"online": ("",), "offline": ("-topk", "-train")}


def max_name_length(super_slicing: bool = False) -> int:
    """The longest workload name xpk accepts on an accelerator type."""
    return MAX_SUPER_SLICING_NAME if super_slicing else MAX_WORKLOAD_NAME


def stage_suffixes(mode: str) -> tuple[str, ...]:
    """('',) for online runs; ('-topk', '-train') for offline runs (capture, then train)."""
    return STAGE_SUFFIXES.get(mode, ("",))


def is_valid_workload_name(name: str, max_len: int = MAX_WORKLOAD_NAME) -> bool:
    return isinstance(name, str) and len(name) <= max_len and bool(_VALID.match(name))


def name_problem(name: str) -> str | None:
    """Why `name` does not match xpk's pattern (length aside), or None when it does."""
    if not name:
        return "it is empty"
    if name != name.lower():
        return "it contains upper-case letters"
    bad = sorted(set("".join(_BAD_CHARS.findall(name))))
    if bad:
        shown = " ".join(repr(c) for c in bad[:8])
        return f"it contains characters other than a-z, 0-9 and '-': {shown}"
    if not name[0].isalpha():
        return "it must start with a letter"
    if name.endswith("-"):
        return "it must end with a letter or digit"
    return None


def _sanitize(text: str) -> str:
    """Lower-case, runs of other characters to one '-', leading non-letters and trailing '-' dropped."""
    out = _DASHES.sub("-", _BAD_CHARS.sub("-", text.lower()))
    out = out.lstrip("-0123456789").rstrip("-")
    return out


def suggest_name(text: str, max_len: int = MAX_WORKLOAD_NAME) -> str:
    """A readable valid name close to `text` (no hash), for a diagnostic's hint."""
    return _sanitize(text)[:max_len].rstrip("-") or "distill"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:HASH_CHARS]


def workload_name(spec_name: str, suffix: str = "", max_len: int = MAX_WORKLOAD_NAME) -> str:
    """A valid xpk workload name for `spec_name` + `suffix`, deterministically.

    A name that is already valid and fits is returned unchanged (with its suffix). Otherwise the
    name is sanitized (lower-case; other characters become '-'), truncated so that the result fits
    in `max_len`, and tagged with a 6-hex-digit hash of the original name and suffix, so two
    different inputs that sanitize or truncate to the same prefix still get different names.
    The suffix (e.g. '-topk', '-train', '-a3') is kept verbatim after sanitizing, at the end.

        >>> workload_name("llama31-8b-prune", "-train")
        'llama31-8b-prune-train'
        >>> len(workload_name("x" * 60, "-topk")) <= 40
        True
    """
    if max_len < 2 + HASH_CHARS:
        raise ValueError(f"max_len {max_len} leaves no room for a name")
    clean_suffix = _DASHES.sub("-", _BAD_CHARS.sub("-", str(suffix).lower())).rstrip("-")
    if clean_suffix and not clean_suffix.startswith("-"):
        clean_suffix = "-" + clean_suffix
    if len(clean_suffix) > max_len - (2 + HASH_CHARS):
        raise ValueError(f"suffix {suffix!r} is too long for a {max_len}-character workload name")
    whole = f"{spec_name}{clean_suffix}"
    if clean_suffix == str(suffix) and is_valid_workload_name(whole, max_len):
        return whole
    base = _sanitize(str(spec_name)) or "w"
    tag = _short_hash(str(spec_name))
    room = max_len - len(clean_suffix) - HASH_CHARS - 1
    base = base[:room].rstrip("-") or "w"
    return f"{base}-{tag}{clean_suffix}"

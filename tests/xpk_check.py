"""Run inside the xpk venv (tests/test_xpk_parser.py starts it): parse argv lists with xpk's own
argument parser, in-process, without a cluster or network.

stdin: a JSON list of argv lists (each starting with "xpk"). stdout: a JSON list of
{"ok": bool, "error": str, "values": {dest: value}} in the same order. xpk is never imported by
distillc; this file only runs under the xpk venv's interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys


def parse(argv: list[str]) -> dict:
    from xpk.parser.core import set_parser

    parser = argparse.ArgumentParser(prog="xpk", description="xpk command")
    set_parser(parser=parser)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = parser.parse_args(argv[1:])
    except SystemExit:
        return {"ok": False, "error": err.getvalue(), "values": {}}
    values = {k: v for k, v in vars(ns).items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return {"ok": True, "error": "", "values": values}


def main() -> None:
    argvs = json.load(sys.stdin)
    json.dump([parse(a) for a in argvs], sys.stdout)


if __name__ == "__main__":
    main()

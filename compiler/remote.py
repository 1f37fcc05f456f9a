"""gs:// paths as `distillc validate` reads them: within a time budget, and saying when it cannot tell.

validate checks a checkpoint before anything is queued: that it exists, its config.json, the
tokenizer beside it, a GGUF file's header. On a local path the filesystem answers at once; on a
gs:// path the answer needs credentials and the network, and either can be missing or slow (with
no credentials, gcsfs's own probing (google_default, its token cache, the GCE metadata server,
then anonymous access) took 15 s on a 2-core VM without a network before the first request, and
the request's retries 33 s more). So a `Remote` answers each question with one of three outcomes:
the answer (exists / a listing / bytes), FileNotFoundError (it does not exist), or `Unreachable`
(cannot tell: no credentials, no network, permission denied, or no answer within the budget),
which the rules turn into one note (DC186) instead of an error: the runtime checks the path again
when it starts.

Bounds: one budget for the whole validate run (`--remote-timeout`, DISTILLC_REMOTE_TIMEOUT,
default 5 s), each request run in a daemon thread joined with what is left of it, so nothing here
hangs; after a timeout or a network error every later request answers at once with the same
reason. Credentials are looked for without the network (the variables and files google-auth
reads, and the machine's DMI name on Google Cloud); none found is Unreachable at once, without
importing gcsfs. Each request is made once per path (cached), and only small reads are made
(listings, config.json, tokenizer files, a GGUF header's first bytes by range), never a checkpoint.

Only stdlib is imported here: gcsfs (and fsspec, aiohttp, google-auth) is imported when the first
gs:// path is read, so a spec with local paths only starts exactly as fast as before.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

from distillc.runtime.gcs_credentials import ADC_FILE, credentials_file, credentials_problem

__all__ = ["ADC_FILE", "Remote", "Unreachable", "credentials_file", "credentials_problem", "gcs_filesystem"]

DEFAULT_BUDGET_S = 5.0
ENV_BUDGET = "DISTILLC_REMOTE_TIMEOUT"
ENV_OFFLINE = "DISTILLC_OFFLINE"
SCHEME = "gs://"
READ_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"


class CredentialsFileError(Exception):
    """The credentials file found cannot be used (unreadable, not JSON, fields missing): every request
    would fail alike; the message names the file."""


class Unreachable(Exception):
    """A remote path whose state cannot be told now; `why` says what stopped it (a phrase)."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = path, why


def is_remote(path: str) -> bool:
    """A URL (gs://, s3://, ...) rather than a local path."""
    return "://" in path


def is_gs(path: str) -> bool:
    return path.startswith(SCHEME)


def gcs_filesystem() -> Callable[[], Any]:
    """What makes a gcsfs filesystem on the credentials google-auth finds (call credentials_problem
    first): gcsfs imported here, in the calling thread and outside the time budget (0.7 s, no
    network); the filesystem made later, within it (a token may be refreshed). A credentials file
    is loaded as it is: google-auth's default search would also run `gcloud config get project`
    (2 s) for a project, which reads do not need; on Google Cloud the metadata server's. gcsfs's
    plain JSON-API class: its default class first asks each bucket's storage layout over gRPC (and
    imports it: 0.7 s more), which reading a few small objects does not need. Its logging is kept
    out of validate's output: what it would say becomes a DC186 note."""
    import logging

    for name in ("gcsfs", "fsspec"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False
    key = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
    before = os.environ.get(key)
    os.environ.setdefault(key, "false")
    try:
        from gcsfs.core import GCSFileSystem
    finally:
        if before is None:
            os.environ.pop(key, None)
    found = credentials_file()

    def make() -> Any:
        info = _credentials_info(found) if found is not None else {}
        kind = info.get("type") if isinstance(info, dict) else None
        try:
            if kind == "authorized_user":  # `gcloud auth application-default login`
                from google.oauth2.credentials import Credentials

                token: Any = Credentials.from_authorized_user_info(info, scopes=[READ_SCOPE])
            elif kind == "service_account":
                from google.oauth2.service_account import Credentials as ServiceAccount

                token = ServiceAccount.from_service_account_info(info, scopes=[READ_SCOPE])
            else:  # the metadata server, or a kind of file google-auth's own search handles (external accounts)
                token = "google_default"
        except (ValueError, KeyError, TypeError) as e:  # google-auth's "missing fields", a malformed key
            raise CredentialsFileError(f"the {kind} credentials in {found} cannot be used ({e})") from None
        return GCSFileSystem(token=token, access="read_only", skip_instance_cache=True)

    return make


def _credentials_info(found: Path) -> Any:
    """The parsed credentials file, or CredentialsFileError naming it (unreadable, not JSON)."""
    try:
        return json.loads(found.read_text())
    except OSError as e:
        raise CredentialsFileError(f"the credentials file {found} cannot be read ({e.strerror or e})") from None
    except ValueError as e:  # not UTF-8, not JSON
        raise CredentialsFileError(f"the credentials file {found} is not JSON ({e})") from None


def _within(fn: Callable[[], Any], seconds: float) -> Any:
    """fn()'s value (or its exception, raised here) if it returns within `seconds`; TimeoutError
    otherwise. A daemon thread: one left waiting on the network never holds the process open."""
    import threading

    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # handed to the caller, whatever it is
            box["error"] = e

    thread = threading.Thread(target=run, name="distillc-remote", daemon=True)
    thread.start()
    thread.join(min(max(seconds, 0.0), threading.TIMEOUT_MAX))  # a larger timeout is an OverflowError
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _why(e: BaseException) -> tuple[str, bool]:
    """(the phrase a note says for a failed request, whether every later request would fail alike:
    no network or no working credentials, rather than this one path)."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = text if len(text) <= 160 else text[:157] + "..."
    kind = type(e).__name__
    if isinstance(e, CredentialsFileError):
        return f"{e}: fix it, or point GOOGLE_APPLICATION_CREDENTIALS at a working one", True
    if isinstance(e, PermissionError) or text.startswith("Forbidden") or getattr(e, "code", None) == 403:
        return "permission denied (the credentials found may not read it)", False
    if kind == "TransportError" or isinstance(e, (ConnectionError, OSError)) or "connect" in kind.lower():
        return f"cannot reach Google Cloud ({text})", True  # google-auth's token refresh, or gcsfs's request
    if getattr(e, "code", None) == 401 or type(e).__module__.startswith("google.auth"):
        return f"the Google credentials were refused ({text})", True
    return f"{kind}: {text}", False


class Remote:
    """gs:// reads for one validate run: cached per request, all within one time budget.

    `filesystem` makes the fsspec-like object the requests go to (info, ls, cat_file); the
    default is gcsfs's, after the credentials check (gcs_filesystem). Tests pass a fake one."""

    def __init__(self, budget_s: float = DEFAULT_BUDGET_S, filesystem: Optional[Callable[[], Any]] = None):
        self.budget_s = budget_s
        self._factory = filesystem
        self._fs: Any = None
        self._down: Optional[str] = None  # set: every request answers Unreachable(why) at once
        self._deadline: Optional[float] = None
        self._cache: dict[tuple[str, ...], Any] = {}
        self.unchecked: dict[str, str] = {}  # path -> why, for each path that could not be told

    # ------------------------------------------------------------------ requests

    def info(self, path: str) -> dict:
        """The object's (or prefix's) metadata: a dict with `type` ('file' or 'directory') and
        `size`; FileNotFoundError when nothing is there."""
        return self._request(("info", path), path, lambda fs: fs.info(path))

    def exists(self, path: str) -> bool:
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def is_file(self, path: str) -> bool:
        try:
            return self.info(path).get("type") == "file"
        except FileNotFoundError:
            return False

    def names(self, path: str) -> frozenset[str]:
        """The names directly under a directory (a prefix); empty when it is missing or a file."""
        try:
            entries = self._request(("ls", path), path, lambda fs: fs.ls(path, detail=False))
        except FileNotFoundError:
            return frozenset()
        return frozenset(str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)

    def read(self, path: str, start: int = 0, end: Optional[int] = None) -> bytes:
        """The bytes [start, end) of a file (to its end when `end` is None): a range request."""
        data = self._request(("cat", path, str(start), str(end)), path, lambda fs: fs.cat_file(path, start=start, end=end))
        return bytes(data)

    # ------------------------------------------------------------------ machinery

    def _prepare(self) -> None:
        """The default filesystem's maker, or `_down` set: no credentials (told from disk at once,
        gcsfs never imported), or gcsfs missing."""
        if self._factory is not None or self._down is not None:
            return
        problem = credentials_problem()
        if problem is None:
            try:
                self._factory = gcs_filesystem()
            except ImportError as e:
                problem = f"gcsfs cannot be imported ({e}); `pip install gcsfs` reads gs:// paths"
        self._down = problem

    def _filesystem(self) -> Any:
        if self._fs is None:
            assert self._factory is not None
            self._fs = self._factory()
        return self._fs

    def _remaining(self) -> float:
        now = time.monotonic()
        if self._deadline is None:
            self._deadline = now + self.budget_s
        return self._deadline - now

    def _request(self, key: tuple[str, ...], path: str, call: Callable[[Any], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = self._answer(path, call)
        outcome = self._cache[key]
        if isinstance(outcome, BaseException):
            if isinstance(outcome, Unreachable):
                self.unchecked.setdefault(path, outcome.why)
            raise outcome
        return outcome

    def _answer(self, path: str, call: Callable[[Any], Any]) -> Any:
        """The value of `call` on the filesystem, or the exception to raise (FileNotFoundError or
        Unreachable), never anything else."""
        self._prepare()
        if self._down is None and self._remaining() <= 0:
            self._down = f"the {self.budget_s:g} s budget for remote checks was spent ({ENV_BUDGET})"
        if self._down is not None:
            return Unreachable(path, self._down)
        try:
            return _within(lambda: call(self._filesystem()), self._remaining())
        except FileNotFoundError as e:
            return e
        except TimeoutError:
            self._down = f"no answer within {self.budget_s:g} s (raise it with --remote-timeout or {ENV_BUDGET})"
            return Unreachable(path, self._down)
        except Exception as e:  # whatever the storage client raises: a reason, never a traceback
            why, everywhere = _why(e)
            if everywhere:
                self._down = why
            return Unreachable(path, why)

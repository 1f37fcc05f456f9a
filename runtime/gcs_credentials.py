"""Whether Google credentials are there, told from the disk alone (stdlib only).

google-auth's own search ends by probing the GCE metadata server over the network, which takes
seconds where there is none (15 s on a 2-core VM without a network, before gcsfs's first request
and its retries), so `validate` (compiler/remote.py) and the runtime's start (runtime/main.py) look
in the same places without the network: GOOGLE_APPLICATION_CREDENTIALS, gcloud's
application-default file, and the machine's DMI name on Google Cloud (where the metadata server
serves credentials).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

# the Google Cloud machines' DMI product name (google-auth's detect_gce_residency_linux reads the same file)
DMI_PRODUCT = "/sys/class/dmi/id/product_name"
ADC_FILE = "application_default_credentials.json"


def _adc_file() -> Optional[Path]:
    """Where `gcloud auth application-default login` writes the credentials google-auth reads."""
    config = os.environ.get("CLOUDSDK_CONFIG")
    if config:
        return Path(config) / ADC_FILE
    if os.name == "nt":
        appdata = os.environ.get("APPDATA")
        return Path(appdata, "gcloud", ADC_FILE) if appdata else None
    return Path.home() / ".config" / "gcloud" / ADC_FILE


def _on_google_cloud() -> bool:
    """A GCE, GKE or TPU VM (the metadata server serves credentials there), told without the network."""
    if os.environ.get("GCE_METADATA_HOST") or os.environ.get("GCE_METADATA_IP"):
        return True
    try:
        return Path(DMI_PRODUCT).read_text().strip().startswith("Google")
    except OSError:
        return False


def credentials_file() -> Optional[Path]:
    """The credentials file google-auth reads first (GOOGLE_APPLICATION_CREDENTIALS, else gcloud's
    application-default file), when there is one."""
    named = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if named:
        return Path(named)
    adc = _adc_file()
    return adc if adc is not None and adc.is_file() else None


def credentials_problem() -> Optional[str]:
    """Why google-auth would find no credentials here (a phrase), or None when it finds some: the
    same places it looks, read from disk only (its own search probes the metadata server over the
    network, which takes seconds where there is none)."""
    found = credentials_file()
    if found is not None:
        if found.is_file():
            return None
        return f"GOOGLE_APPLICATION_CREDENTIALS names {found}, which {'is not a file' if found.exists() else 'does not exist'}"
    if _on_google_cloud():
        return None
    return ("no Google credentials (no GOOGLE_APPLICATION_CREDENTIALS, no `gcloud auth application-default "
            "login`, not on Google Cloud)")


def gs_paths(value: Any, key: str = "") -> list[tuple[str, str]]:
    """(key, path) of every gs:// string in a config's data (checkpoints, sources, tokenizer, run
    directory, ...), in order; keys dotted, list items [i]."""
    if isinstance(value, str):
        return [(key, value)] if value.startswith("gs://") else []
    if isinstance(value, dict):
        return [hit for k, v in value.items() for hit in gs_paths(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, (list, tuple)):
        return [hit for i, v in enumerate(value) for hit in gs_paths(v, f"{key}[{i}]")]
    return []


def missing_credentials(config: Any) -> Optional[str]:
    """The error for a config (JSON-like data) that reads gs:// paths on a machine without
    credentials, naming the first path and the fix; None when it has none or credentials are there."""
    paths = gs_paths(config)
    problem = credentials_problem() if paths else None
    if problem is None:
        return None
    key, path = paths[0]
    more = f" (and {len(paths) - 1} more gs:// path(s))" if len(paths) > 1 else ""
    return (f"{key} is {path}{more}, but {problem}: set GOOGLE_APPLICATION_CREDENTIALS to a credentials file, "
            "run `gcloud auth application-default login`, or use local paths")

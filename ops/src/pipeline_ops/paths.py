"""Where the project keeps what it installs (.tools), what it runs (.local), and what it
builds once per machine (the cache, shared by every clone and by CI on the same machine)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TOOLS_DIR = Path(os.environ.get("PIPELINE_TOOLS_DIR", PROJECT_ROOT / ".tools"))
LOCAL_DIR = Path(os.environ.get("PIPELINE_LOCAL_DIR", PROJECT_ROOT / ".local"))
CACHE_DIR = Path(os.environ.get("PR_ANOMALY_CACHE", Path.home() / ".cache" / "pr-anomaly"))
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples"
VAULT_CONFIG_DIR = PROJECT_ROOT / "ops" / "vault"

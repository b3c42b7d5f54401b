"""Where the project keeps what it installs (.tools) and what it runs (.local)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[3]
TOOLS_DIR = Path(os.environ.get("PIPELINE_TOOLS_DIR", PROJECT_ROOT / ".tools"))
LOCAL_DIR = Path(os.environ.get("PIPELINE_LOCAL_DIR", PROJECT_ROOT / ".local"))
SAMPLES_DIR = PROJECT_ROOT / "data" / "samples"
VAULT_CONFIG_DIR = PROJECT_ROOT / "ops" / "vault"

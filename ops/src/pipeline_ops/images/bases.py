"""Local base images, made from Debian's packages by debootstrap: no registry can be pulled
from here, so the official bases (``python:3.11.14-slim-bookworm``, Maven) are replaced, for
local builds only, by images giving the Dockerfiles the same contract.

| base | replaces | gives the Dockerfile |
|---|---|---|
| python | python:3.11-slim-bookworm | `python` with venv and pip, `useradd`, CA certificates |
| python-java | the same, for Spark | the above plus Java 17 (headless JRE) and `ps` |
| maven | maven:3.9-eclipse-temurin-17 | `mvn` with Java 17 |

Each is cached in the engine under a tag made of its recipe's hash: rebuilt only when the
recipe changes. Neither the apt mirror nor anything of the host's network settings stays in
a base (apt's sources and lists are removed after debootstrap).

The stages that download (pip, Maven) build ``FROM`` a *build variant* of a base: the base
plus the host's own CA bundle and pip/Maven settings, read from the host at build time. Only
the install stage of a Dockerfile uses it; the shipped stage starts from the plain base and
copies the installed result, so no shipped layer carries the host's settings.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline_ops.base import commands
from pipeline_ops.images.engine import ContainerEngine, EngineError

log = logging.getLogger(__name__)

SUITE = "bookworm"
REPOSITORY = "pr-anomaly-base"
_PYTHON = ("python3", "python3-venv", "python-is-python3", "ca-certificates", "netbase", "tzdata")


@dataclass(frozen=True)
class BaseRecipe:
    name: str
    packages: tuple[str, ...]
    changes: tuple[str, ...] = ()  # image config, as `docker import --change`

    @property
    def tag(self) -> str:
        recipe = (SUITE, self.packages, self.changes, inspect.getsource(_strip))
        digest = hashlib.sha256(repr(recipe).encode()).hexdigest()[:12]
        return f"{REPOSITORY}/{self.name}:{SUITE}-{digest}"


RECIPES = {
    "python": BaseRecipe("python", _PYTHON, ('CMD ["python3"]',)),
    "python-java": BaseRecipe(
        "python-java",
        (*_PYTHON, "openjdk-17-jre-headless", "procps"),
        ("ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64", 'CMD ["python3"]'),
    ),
    "maven": BaseRecipe(
        "maven",
        ("maven", "openjdk-17-jdk-headless", "ca-certificates"),
        ("ENV JAVA_HOME=/usr/lib/jvm/java-17-openjdk-amd64", 'CMD ["mvn"]'),
    ),
}


def apt_mirror() -> str:
    """The Debian mirror apt already uses on this machine (never written anywhere)."""
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    for path in sources:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        # deb822: a stanza with URIs: and Suites: naming the suite (not -security/-updates)
        for stanza in text.split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:(.*)$", stanza, re.M)
            if uris and suites and SUITE in suites[1].split():
                return uris[1]
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[2] == SUITE:
                return words[1]
    raise EngineError(f"no apt source for Debian {SUITE} found in /etc/apt: cannot debootstrap")


def ensure_base(engine: ContainerEngine, recipe: BaseRecipe) -> str:
    """The recipe's image in the engine, made now if missing. Returns its reference."""
    if engine.docker("image", "inspect", recipe.tag, check=False).returncode == 0:
        return recipe.tag
    started = time.monotonic()
    mirror = apt_mirror()  # this machine's: redacted from every message
    with tempfile.TemporaryDirectory(prefix=f"base-{recipe.name}-") as tmp:
        root = Path(tmp) / "root"
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(recipe.packages)}",
            SUITE,
            str(root),
            mirror,
        ]
        log.info("debootstrap of base %s (a few minutes, once per recipe)", recipe.name)
        result = commands.run(command, what=f"debootstrap of base {recipe.name}", check=False,
                              timeout=None, secrets=(mirror,))  # fmt: skip
        if result.returncode != 0:
            said = commands.redact(commands.tail(result.stdout + result.stderr, 3000), (mirror,))
            raise EngineError(f"debootstrap of {recipe.name} failed:\n{said}")
        _strip(root)
        changes = [arg for change in recipe.changes for arg in ("--change", change)]
        engine.import_tree(root, recipe.tag, changes, what=f"import of base {recipe.name}")
    log.info("base %s made in %.0f s", recipe.tag, time.monotonic() - started)
    return recipe.tag


def _strip(root: Path) -> None:
    """No apt sources (they name this machine's mirror), no package lists or caches."""
    for path in (root / "etc/apt/sources.list", *(root / "etc/apt/sources.list.d").glob("*")):
        path.unlink(missing_ok=True)
    for folder in ("var/lib/apt/lists", "var/cache/apt/archives", "var/log"):
        for child in (root / folder).glob("*"):
            if child.is_file():
                child.unlink()
            elif child.is_dir() and child.name != "partial":
                shutil.rmtree(child)


# -- build variants: a base plus the host's download settings ---------------------------------

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
HOST_JAVA_TRUSTSTORE = Path("/etc/ssl/certs/java/cacerts")
PIP_KEYS = ("index-url", "extra-index-url", "trusted-host", "default-timeout", "timeout")


def host_pip_settings() -> dict[str, str]:
    """The host's effective pip index settings (``pip config list``), without its paths."""
    listed = commands.output(
        ["python3", "-m", "pip", "config", "list"], what="the host's pip settings", check=False
    )
    settings = {}
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        name = key.rsplit(".", 1)[-1]
        if name in PIP_KEYS:
            settings[name] = value.strip().strip("'\"")
    return settings


def ensure_build_variant(engine: ContainerEngine, base: str, tool: str) -> str:
    """``base`` plus what ``tool`` ("pip" or "maven") needs to download from this machine:
    the host's CA bundle and settings, copied in at build time. Cached by their content."""
    files: dict[str, bytes] = {}
    if HOST_CA_BUNDLE.exists():
        files["etc/ssl/certs/ca-certificates.crt"] = HOST_CA_BUNDLE.read_bytes()
    if tool == "pip":
        settings = {**host_pip_settings(), "cert": "/etc/ssl/certs/ca-certificates.crt"}
        files["etc/pip.conf"] = (
            "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))
        ).encode()
    elif tool == "maven":
        if HOST_JAVA_TRUSTSTORE.exists():
            files["etc/ssl/certs/java/cacerts"] = HOST_JAVA_TRUSTSTORE.read_bytes()
        user_settings = Path.home() / ".m2" / "settings.xml"
        if user_settings.exists():
            files["root/.m2/settings.xml"] = user_settings.read_bytes()
    digest = hashlib.sha256(repr((base, sorted(files.items()))).encode()).hexdigest()[:12]
    tag = f"{base.split(':')[0]}-build-{tool}:{digest}"
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="build-variant-") as tmp:
        context = Path(tmp)
        lines = [f"FROM {base}"]
        for relative, content in files.items():
            (context / relative).parent.mkdir(parents=True, exist_ok=True)
            (context / relative).write_bytes(content)
            lines.append(f"COPY {relative} /{relative}")
        (context / "Dockerfile").write_text("\n".join(lines) + "\n")
        engine.docker("build", "--quiet", "-t", tag, str(context),
                      what=f"build of the {tool} build variant of {base}")  # fmt: skip
    return tag

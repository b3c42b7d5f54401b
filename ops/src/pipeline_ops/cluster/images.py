"""Images made here, FROM scratch, from one static binary: no registry can be pulled from.

``push`` puts the same image into the cluster's registry, from which the kubelet pulls it.
An image is an OCI image layout in a tar (one uncompressed layer holding the binary), named
with containerd's ``io.containerd.image.name`` annotation, and imported into the cluster's
containerd (namespace k8s.io, where the CRI looks) with ``ctr images import``. A dynamically
linked binary (a host build of the same program) is refused: FROM scratch it cannot start.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin

import requests

from pipeline_ops.base import commands
from pipeline_ops.cluster import ClusterError
from pipeline_ops.cluster.layout import Layout, binaries, binary


@dataclass(frozen=True)
class ScratchImage:
    name: str  # repository, e.g. pr-anomaly.local/pause
    binary: str  # a name in ops/cluster/binaries.tsv, built static
    entrypoint: tuple[str, ...] = ()
    user: str = "65534"
    # where the binary is in the image: /<binary>, or the path its upstream image has when
    # something runs it by that path (the Prometheus Operator runs /bin/prometheus-config-reloader)
    path: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{binaries()[self.binary].version}"

    @property
    def target(self) -> str:
        return self.path or f"/{self.binary}"


PT_INTERP = 3  # an ELF program header asking for a program interpreter (ld.so)


def dynamically_linked(program: Path) -> bool:
    """Whether ``program`` (an ELF executable) needs ld.so and shared libraries."""
    with program.open("rb") as elf:
        header = elf.read(64)
        if len(header) < 64 or header[:4] != b"\x7fELF" or header[4] != 2:  # ELF64 only
            raise ClusterError(f"{program} is not a 64-bit ELF executable")
        order = "<" if header[5] == 1 else ">"
        (phoff,) = struct.unpack_from(order + "Q", header, 32)
        phentsize, phnum = struct.unpack_from(order + "HH", header, 54)
        elf.seek(phoff)
        table = elf.read(phentsize * phnum)
    return any(
        struct.unpack_from(order + "I", table, i * phentsize)[0] == PT_INTERP for i in range(phnum)
    )


MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"


def _blob(blobs: dict[str, bytes], data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    blobs[digest] = data
    return {"digest": digest, "size": len(data)}


def _manifest(image: ScratchImage) -> tuple[dict[str, bytes], bytes]:
    """The image's blobs (layer, config) and its manifest."""
    source = binary(image.binary)
    if dynamically_linked(source):
        raise ClusterError(
            f"{image.binary}: {source} is dynamically linked (a host build?), which an image "
            "FROM scratch cannot run; ops/cluster/binaries.tsv must build it static"
        )
    target = image.target
    layer_buf = io.BytesIO()
    with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
        for parent in reversed(PurePosixPath(target.lstrip("/")).parents[:-1]):
            directory = tarfile.TarInfo(str(parent))
            directory.type, directory.mode, directory.mtime = tarfile.DIRTYPE, 0o755, 0
            layer.addfile(directory)
        info = tarfile.TarInfo(target.lstrip("/"))
        info.size, info.mode, info.mtime = source.stat().st_size, 0o755, 0
        with source.open("rb") as content:
            layer.addfile(info, content)
    layer_bytes = layer_buf.getvalue()
    blobs: dict[str, bytes] = {}
    layer_desc = {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        **_blob(blobs, layer_bytes),
    }
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": [target, *image.entrypoint], "User": image.user},
        "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]},
    }
    config_desc = {
        "mediaType": "application/vnd.oci.image.config.v1+json",
        **_blob(blobs, json.dumps(config).encode()),
    }
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": config_desc,
        "layers": [layer_desc],
    }
    return blobs, json.dumps(manifest).encode()


def oci_archive(image: ScratchImage) -> bytes:
    blobs, manifest = _manifest(image)
    manifest_desc = {
        "mediaType": MANIFEST_TYPE,
        **_blob(blobs, manifest),
        "platform": {"architecture": "amd64", "os": "linux"},
        "annotations": {
            "io.containerd.image.name": image.ref,
            "org.opencontainers.image.ref.name": image.ref.rsplit(":", 1)[1],
        },
    }
    index = {"schemaVersion": 2, "manifests": [manifest_desc]}
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as archive:
        files = {
            "oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps(index).encode(),
            **{f"blobs/sha256/{d.split(':')[1]}": data for d, data in blobs.items()},
        }
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def ctr(layout: Layout, *args: str, stdin: bytes | None = None, timeout: float = 600) -> str:
    """``ctr ARGS`` against the cluster's containerd (namespace k8s.io); its stdout."""
    result = commands.run(
        ["ctr", "--address", layout.containerd_socket, "--namespace", "k8s.io", *args],
        what="ctr (the cluster's containerd)", stdin=stdin, text=False, timeout=timeout,
    )  # fmt: skip
    return bytes(result.stdout).decode()


def ensure_imported(layout: Layout, images: list[ScratchImage]) -> list[str]:
    """Import the images the cluster's containerd does not have yet; their refs."""
    present = set(ctr(layout, "images", "list", "--quiet").split())
    imported = []
    for image in images:
        if image.ref not in present:
            ctr(layout, "images", "import", "-", stdin=oci_archive(image))
            imported.append(image.ref)
    return imported


def push(image: ScratchImage, registry: str) -> str:
    """Push the image to a registry over its HTTP API (what ``docker push`` does); the
    reference by digest, ``REGISTRY/NAME@sha256:...``, as production manifests pin it."""
    blobs, manifest = _manifest(image)
    repository = image.name.split("/", 1)[1]
    base = f"http://{registry}/v2/{repository}"
    try:
        for digest, data in blobs.items():
            if requests.head(f"{base}/blobs/{digest}", timeout=10).status_code == 200:
                continue
            started = requests.post(f"{base}/blobs/uploads/", timeout=10)
            started.raise_for_status()
            location = urljoin(base, started.headers["Location"])
            separator = "&" if "?" in location else "?"
            requests.put(
                f"{location}{separator}digest={digest}", data=data, timeout=60,
                headers={"Content-Type": "application/octet-stream"},
            ).raise_for_status()  # fmt: skip
        tag = image.ref.rsplit(":", 1)[1]
        requests.put(
            f"{base}/manifests/{tag}", data=manifest, headers={"Content-Type": MANIFEST_TYPE},
            timeout=10,
        ).raise_for_status()  # fmt: skip
    except requests.RequestException as error:
        raise ClusterError(f"push of {image.ref} to {registry} failed: {error}") from error
    return f"{registry}/{repository}@sha256:{hashlib.sha256(manifest).hexdigest()}"

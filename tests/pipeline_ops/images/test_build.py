"""`make images`: five images built as the workflows build them, on local bases, carrying
nothing of the host's download settings, rebuilt only where an input changed."""

from __future__ import annotations

import hashlib
import json

import pytest

from pipeline_ops import stages
from pipeline_ops.images.bases import HOST_CA_BUNDLE, host_pip_settings
from pipeline_ops.images.build import BUILD_DIR, CACHE_REPOSITORY, build_image, image_tag
from pipeline_ops.images.engine import ContainerEngine

pytestmark = pytest.mark.images


def test_the_five_images_are_built_from_the_stage_lists_dockerfiles_and_tagged_with_the_commit(
    built,
) -> None:
    assert sorted(built) == sorted(stages.IMAGE_NAMES)
    assert {b.name: b.dockerfile for b in built.values()} == {
        i.name: i.dockerfile for i in stages.IMAGES
    }
    tag = image_tag()
    for image in built.values():
        assert image.reference == f"{image.name}:{tag}"
        assert image.size_bytes > 100_000_000
        assert image.layers >= 5


def test_serving_images_carry_neither_torch_nor_pandas(engine: ContainerEngine, built) -> None:
    for name in ("model-serving", "load-gate"):
        result = engine.docker(
            "run",
            "--rm",
            "--entrypoint",
            "python",
            built[name].reference,
            "-c",
            "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('pandas'))",
        )
        assert result.stdout.split() == ["None", "None"], name


def test_no_shipped_image_carries_the_hosts_ca_bundle_or_index_settings(
    engine: ContainerEngine, built
) -> None:
    host_ca = hashlib.sha256(HOST_CA_BUNDLE.read_bytes()).hexdigest()
    secrets_of_host = [v for v in host_pip_settings().values() if len(v) > 8]
    for image in built.values():
        history = engine.docker(
            "history", "--no-trunc", "--format", "{{.CreatedBy}}", image.reference
        )
        assert "BEGIN CERTIFICATE" not in history.stdout
        assert not any(value in history.stdout for value in secrets_of_host), image.name
        listing = engine.docker(
            "run",
            "--rm",
            "--entrypoint",
            "sh",
            image.reference,
            "-c",
            "sha256sum /etc/ssl/certs/ca-certificates.crt 2>/dev/null; ls /etc/pip.conf 2>&1",
            check=False,
        )
        assert host_ca not in listing.stdout, f"{image.name} carries the host's CA bundle"
        assert "No such file" in listing.stdout, f"{image.name} carries a pip.conf"


def test_a_build_leaves_no_dangling_image_but_keeps_each_stage_as_the_layer_cache(
    engine: ContainerEngine, built
) -> None:
    dangling = engine.docker("images", "--quiet", "--filter", "dangling=true").stdout.split()
    assert dangling == [], "make images prunes what earlier builds left"
    kept = engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    assert f"{CACHE_REPOSITORY}/ml-training:dependencies" in kept


def test_a_rebuild_with_unchanged_inputs_reuses_every_layer(engine: ContainerEngine, built) -> None:
    """After the prune of `make images` too: every step of every stage comes from the cache
    (the install stages' results are the ones the prune would take if they were untagged)."""
    first = built["load-gate"]
    again = build_image(engine, "load-gate", first.dockerfile, image_tag())
    assert again.image_id == first.image_id
    info = json.loads(engine.docker("image", "inspect", again.reference).stdout)[0]
    assert info["Config"]["Entrypoint"] == ["load-gate"]
    assert "Running in" not in (BUILD_DIR / "load-gate.build.log").read_text()

"""Each image tested as a container, run the way its manifest runs it, against the real local
platform: `make image-test` here, and the image-test step of every stage workflow in CI.

Three parts: how the manifests run a container (``images.policy``), the bench that runs
them against a fresh local platform (``images.bench``), and what each image is checked for
(``images.checks``). This module runs the checks in pipeline order, each a step of one
``base.steps.StepLog``, and prints their table.
"""

from __future__ import annotations

from pipeline_ops import stages
from pipeline_ops.base.errors import OpsError
from pipeline_ops.base.steps import StepLog, steps_table
from pipeline_ops.images.bench import ImageTestError, open_bench
from pipeline_ops.images.build import built_images
from pipeline_ops.images.checks import stage_checks
from pipeline_ops.images.engine import ContainerEngine, EngineError


def run_image_tests(
    engine: ContainerEngine, selected: list[str] | None, overrides: dict[str, str]
) -> int:
    """Every check of the ``selected`` images (default: all, in pipeline order); 1 if any
    failed. ``overrides``: image name -> reference to test instead of the one built here."""
    selected = selected or list(stages.IMAGE_NAMES)
    unknown = sorted(set(selected) - set(stages.IMAGE_NAMES))
    if unknown:
        raise EngineError(
            f"unknown image {', '.join(unknown)}; choose from {', '.join(stages.IMAGE_NAMES)}"
        )
    engine.up()
    built = built_images()
    images = {
        name: overrides.get(name) or (built[name].reference if name in built else "")
        for name in selected
    }
    missing = [n for n, ref in images.items() if not ref]
    if missing:
        raise EngineError(
            f"no image for {', '.join(missing)}: run `make images` or pass --image NAME=REF"
        )
    steps = StepLog()
    with open_bench(engine, images) as bench:
        for image, name, check in stage_checks(bench, selected):
            try:
                with steps.step(f"{image} {name}") as step:
                    step.outcome = check()
            except (ImageTestError, OpsError):
                continue  # the step log has it; the next check runs
    failures = sum(s.failed for s in steps.steps)
    print(steps_table([{**s.as_dict(), "outcome": _first_line(s.outcome)} for s in steps.steps]))
    print(f"{failures} check(s) failed" if failures else "all image checks passed")
    return 1 if failures else 0


def _first_line(outcome: str, chars: int = 160) -> str:
    line = outcome.strip().splitlines()[0] if outcome.strip() else ""
    return line if len(line) <= chars else line[:chars] + "…"

"""Local blue/green: serve the champion (blue) and the challenger (green), run the cluster's
pre-promotion analysis against green, and move the `champion` alias only when it passes.

The analysis is read from the same `AnalysisTemplate` Argo Rollouts runs in the cluster
(`argo-apps/base/model-serving-analysistemplates.yaml`): its `web` metrics are evaluated over
HTTP and its `job` metric (the Locust load gate) runs as a local process with the template's
own arguments, so the local decision and the cluster's cannot drift apart.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

from pipeline_contracts.readiness import load_failed
from pipeline_contracts.registry import CHALLENGER, CHAMPION, ModelReference
from pipeline_ops import stages
from pipeline_ops.base import processes
from pipeline_ops.base.errors import OpsError, ProcessExited, WaitTimeout
from pipeline_ops.base.processes import ProcessRecord, StateFile
from pipeline_ops.paths import PROJECT_ROOT

log = logging.getLogger(__name__)

# What a run starts: serving instances (blue, green) and the load gate, each a process in the
# platform's state record under its name (`make down` stops them).
SERVING = stages.stage("model-serving")
LOAD_GATE = stages.LOAD_GATE
ANALYSIS_TEMPLATES = PROJECT_ROOT / "argo-apps" / "base" / f"{SERVING.name}-analysistemplates.yaml"
PRE_PROMOTION = f"{SERVING.name}-pre-promotion"
# How the template addresses the preview Service; locally, green's URL stands in for it.
NAMESPACE_ARG = "{{args.namespace}}"
PREVIEW_SERVICE_URL = f"http://{SERVING.name}-preview.{NAMESPACE_ARG}.svc.cluster.local:8080"
# The load gate's own knobs (LOAD_GATE_SAMPLE, ...), the only variables it takes from ours.
LOAD_GATE_KNOBS = "LOAD_GATE_"
# The programs of the load-gate image that the template's job metrics run: the Locust load
# gate (the image's entrypoint) and the quality gate (false alarms on real pull requests).
JOB_PROGRAMS = (LOAD_GATE.cli, *LOAD_GATE.programs)


class PromotionError(OpsError):
    pass


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# -- serving instances ---------------------------------------------------------------------
@contextmanager
def recorded(state: StateFile, record: ProcessRecord) -> Iterator[ProcessRecord]:
    """``record`` in the platform's state record while the block runs, stopped (its whole
    group) and dropped from it if the block fails or is interrupted."""
    state.add(record)
    try:
        yield record
    except BaseException:
        stop(state, record)
        raise


def stop(state: StateFile, record: ProcessRecord) -> None:
    """SIGTERM (in-flight requests finish), then SIGKILL; dropped from the state record."""
    processes.stop(record)
    state.remove(record.name)


def serving_name(colour: str) -> str:
    return f"{SERVING.name}-{colour}"


def start_serving(
    colour: str,
    model: ModelReference,
    env: Mapping[str, str],
    log_dir: Path,
    state: StateFile,
    *,
    port: int | None = None,
    timeout: float = 120,
) -> ProcessRecord:
    """Start model-serving for ``model`` on 127.0.0.1, recorded in ``state`` as
    ``model-serving-<colour>``, and wait until /readyz answers 200."""
    port = port or processes.free_port()
    argv = [_bin(SERVING.cli), "--host", "127.0.0.1", "--port", str(port)]
    record = processes.start(
        serving_name(colour), argv, log_file=log_dir / f"{serving_name(colour)}.log",
        env={**env, "SERVING_MODEL_URI": model.uri}, cwd=PROJECT_ROOT, ports={"main": port},
        append=True,
    )  # fmt: skip
    with recorded(state, record):
        try:
            processes.wait_healthy(record, lambda: _ready(record, colour, model), timeout,
                                   what="ready", every=0.3)  # fmt: skip
        except (ProcessExited, WaitTimeout) as error:
            raise PromotionError(f"{SERVING.name} ({colour}, {model}): {error}") from error
    return record


def _ready(record: ProcessRecord, colour: str, model: ModelReference) -> bool:
    try:
        ready = requests.get(f"{record.url}/readyz", timeout=2)
        if ready.status_code == 200:
            return True
        detail = ready.json().get("detail")
    except (requests.RequestException, ValueError):
        return False
    if load_failed(detail):  # a pinned model that fails to load is not one to promote
        raise PromotionError(f"{SERVING.name} ({colour}, {model}) cannot serve: {detail}")
    return False


def kept_serving(state: StateFile) -> list[ProcessRecord]:
    """The model-serving instances a run left running (``KEEP_SERVING=1``)."""
    return [r for n, r in state.running().items() if n.startswith(f"{SERVING.name}-")]


def stop_kept_serving(state: StateFile) -> list[str]:
    """Stop what a run left running (and a load gate an interrupted run could not stop)."""
    stopped = []
    for name, record in state.running().items():
        if name.startswith(f"{SERVING.name}-") or name == LOAD_GATE.name:
            stop(state, record)
            stopped.append(name)
    return stopped


def served_version(url: str) -> str | None:
    try:
        return str(requests.get(f"{url}/version", timeout=5).json().get("model_version"))
    except (requests.RequestException, ValueError):
        return None


# -- the analysis, read from the AnalysisTemplate ---------------------------------------
@dataclass
class MetricResult:
    name: str
    passed: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class AnalysisResult:
    metrics: list[MetricResult]

    @property
    def passed(self) -> bool:
        return all(m.passed for m in self.metrics)

    def failures(self) -> list[str]:
        return [f"{m.name}: {m.detail}" for m in self.metrics if not m.passed]


def load_template(path: Path = ANALYSIS_TEMPLATES, name: str = PRE_PROMOTION) -> dict[str, Any]:
    for document in yaml.safe_load_all(path.read_text()):
        kind = (document or {}).get("kind")
        if kind == "AnalysisTemplate" and document["metadata"]["name"] == name:
            return document
    raise PromotionError(f"no AnalysisTemplate {name!r} in {path}")


def _substitute(text: str, args: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        key = match.group(1)
        if key not in args:
            raise PromotionError(f"the analysis template uses {{{{args.{key}}}}}, not given")
        return args[key]

    return re.sub(r"\{\{\s*args\.([A-Za-z0-9_-]+)\s*\}\}", value, text)


def _json_path(document: Any, path: str) -> Any:
    """The `{$.a.b}` subset of JSONPath that the template's web metrics use."""
    match = re.fullmatch(r"\{\$((?:\.[A-Za-z0-9_-]+)*)\}", path.strip())
    if not match:
        raise PromotionError(f"unsupported jsonPath {path!r} in the analysis template")
    for key in filter(None, match.group(1).split(".")):
        document = document[key]
    return document


def _condition_holds(condition: str, result: Any) -> bool:
    match = re.fullmatch(r'\s*result\s*==\s*"([^"]*)"\s*', condition)
    if not match:
        raise PromotionError(f"unsupported successCondition {condition!r} in the analysis template")
    return str(result) == match.group(1)


def _web_metric(metric: dict[str, Any], args: dict[str, str]) -> MetricResult:
    web = metric["provider"]["web"]
    url = _substitute(web["url"], args)
    condition = _substitute(metric["successCondition"], args)
    count = int(metric.get("count", 1))
    interval = _seconds(metric.get("interval", "0s")) if count > 1 else 0
    for attempt in range(count):
        try:
            response = requests.get(url, timeout=float(web.get("timeoutSeconds", 10)))
            result = _json_path(response.json(), web["jsonPath"])
        except (requests.RequestException, ValueError, KeyError, TypeError) as error:
            return MetricResult(metric["name"], False, f"GET {url} failed: {error}")
        if not _condition_holds(condition, result):
            return MetricResult(metric["name"], False, f"GET {url}: {result!r}, wanted {condition}")
        if attempt + 1 < count:
            time.sleep(min(interval, 1.0))  # locally the service cannot drift in between
    return MetricResult(metric["name"], True, f"GET {url}: {condition} ({count}x)")


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)", str(duration))
    if not match:
        raise PromotionError(f"unsupported duration {duration!r}")
    value, unit = int(match.group(1)), match.group(2)
    return value / 1000 if unit == "ms" else value * (60 if unit == "m" else 1)


def _job_metric(
    metric: dict[str, Any],
    args: dict[str, str],
    work_dir: Path,
    run_time: str | None,
    state: StateFile,
) -> MetricResult:
    """The metric's Job as a local process: the load-gate image's program (its entrypoint,
    or the container's ``command``) with the template's own arguments, its report in
    ``work_dir/<program>``."""
    container = metric["provider"]["job"]["spec"]["template"]["spec"]["containers"][0]
    if container["image"].split(":")[0].split("/")[-1] != LOAD_GATE.name:
        raise PromotionError(f"the analysis job runs {container['image']!r}, not the load gate")
    program = (container.get("command") or [LOAD_GATE.cli])[0]
    if program not in JOB_PROGRAMS:
        raise PromotionError(f"the analysis job runs {program!r}, not one of {JOB_PROGRAMS}")
    report_dir = work_dir / program
    argv = [_substitute(str(a), args) for a in container.get("args", [])]
    argv = _set_option(argv, "--report-dir", str(report_dir))
    if run_time and program == LOAD_GATE.cli:
        argv = _set_option(argv, "--run-time", run_time)
    report_dir.mkdir(parents=True, exist_ok=True)
    knobs = {k: v for k, v in os.environ.items() if k.startswith(LOAD_GATE_KNOBS)}
    record = processes.start(
        program, [_bin(program), *argv], log_file=report_dir / f"{program}.log",
        env=processes.minimal_environment(knobs), cwd=PROJECT_ROOT,
    )  # fmt: skip
    with recorded(state, record):
        returncode = _exit_code(record)
    state.remove(record.name)
    report_path = report_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if returncode == 0:
        return MetricResult(metric["name"], True, f"{program}: limits met", report)
    breached = [
        f"{c['name']} {c['measured']} (limit {c['limit']})"
        for c in report.get("checks", [])
        if not c.get("passed")
    ]
    log_tail = (record.log_tail().splitlines() or [""])[-1]
    reason = "; ".join(breached) or report.get("error") or log_tail
    return MetricResult(metric["name"], False, f"{program} exited {returncode}: {reason}", report)


def _exit_code(record: ProcessRecord) -> int:
    """Wait for ``record``'s process (a child of ours) to end; its exit code."""
    _, status = os.waitpid(record.pid, 0)
    return os.waitstatus_to_exitcode(status)


def _set_option(argv: list[str], option: str, value: str) -> list[str]:
    if option in argv:
        index = argv.index(option)
        return [*argv[: index + 1], value, *argv[index + 2 :]]
    return [*argv, option, value]


def run_analysis(
    preview_url: str,
    model: ModelReference,
    work_dir: Path,
    *,
    run_time: str | None = None,
    template: dict[str, Any] | None = None,
    state: StateFile,
) -> AnalysisResult:
    """Evaluate every metric of the pre-promotion template against ``preview_url``, which
    should serve ``model`` (a version: what git pins in the cluster); each job metric's
    program, while it runs, is in ``state``, its report in ``work_dir/<program>``."""
    template = template or load_template()
    as_text = json.dumps(template)
    if PREVIEW_SERVICE_URL not in as_text:
        raise PromotionError(f"the analysis template no longer addresses {PREVIEW_SERVICE_URL}")
    template = json.loads(as_text.replace(PREVIEW_SERVICE_URL, preview_url))
    args = {a["name"]: str(a.get("value", "")) for a in template["spec"].get("args", [])}
    args.update({"model": model.versioned_uri, "model-name": model.name})
    results = []
    for metric in template["spec"]["metrics"]:
        provider = metric["provider"]
        if "web" in provider:
            results.append(_web_metric(metric, args))
        elif "job" in provider:
            results.append(_job_metric(metric, args, work_dir, run_time, state))
        else:
            raise PromotionError(f"metric {metric['name']!r}: only web and job run locally")
    return AnalysisResult(results)


# -- the decision -------------------------------------------------------------------------
@dataclass
class PromotionDecision:
    promoted: bool
    reason: str
    champion_before: str | None
    challenger: str | None
    champion_after: str | None
    analysis: AnalysisResult | None = None
    active_url: str | None = None
    active_pid: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "promoted": self.promoted,
            "reason": self.reason,
            "champion_before": self.champion_before,
            "challenger": self.challenger,
            "champion_after": self.champion_after,
            "active_url": self.active_url,
            "active_pid": self.active_pid,
            "analysis": [
                {"metric": m.name, "passed": m.passed, "detail": m.detail} for m in self._metrics()
            ],
            "load_gate": next((m.data for m in self._metrics() if m.name == LOAD_GATE.name), {}),
        }

    def _metrics(self) -> list[MetricResult]:
        return self.analysis.metrics if self.analysis else []


def alias_version(client, model_name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(model_name, alias).version)
    except MlflowException:
        return None


def blue_green(
    client,
    model_name: str,
    serving_env: Mapping[str, str],
    work_dir: Path,
    state: StateFile,
    *,
    gate_run_time: str | None = None,
    keep_serving: bool = False,
    on_step: Callable[[str], None] = lambda _: None,
) -> PromotionDecision:
    """Blue = `champion`, green = `challenger`; promote green if the analysis passes. What
    a previous run kept serving (in ``state``) is reused if it still serves the champion and
    nothing is to be promoted, else stopped."""
    champion = alias_version(client, model_name, CHAMPION)
    challenger = alias_version(client, model_name, CHALLENGER)
    if challenger is None or challenger == champion:
        reason = (
            "no challenger is registered"
            if challenger is None
            else f"version {champion} is already champion: nothing to promote"
        )
        kept = _reuse_kept(state, champion, keep_serving, on_step)
        return PromotionDecision(False, reason, champion, challenger, champion, None, *_where(kept))
    for name in stop_kept_serving(state):
        on_step(f"stopped {name}, kept by an earlier run")
    blue: tuple[ProcessRecord, str] | None = None
    green: tuple[ProcessRecord, str] | None = None
    blue_problem = ""
    try:
        if champion is not None:
            on_step(f"blue: serving champion v{champion}")
            try:
                blue = (start_serving("blue", ModelReference.at_version(model_name, champion),
                                      serving_env, work_dir, state), champion)  # fmt: skip
            except PromotionError as error:
                # In the cluster blue runs the image it was deployed with; here it runs this
                # code, which may not read an older champion (another feature spec): green
                # is then judged on its own, as for a first model.
                blue_problem = f" (blue could not be served: {error})"
                on_step(f"blue: not served, green is judged alone{blue_problem}")
        on_step(f"green: serving challenger v{challenger}")
        green = (start_serving("green", ModelReference.at_version(model_name, challenger),
                               serving_env, work_dir, state), challenger)  # fmt: skip
        on_step("analysis: readiness, model check, false alarms, load gate against green")
        analysis = run_analysis(
            green[0].url, ModelReference.at_version(model_name, challenger),
            work_dir, run_time=gate_run_time, state=state,
        )  # fmt: skip
        if not analysis.passed:
            reason = "analysis failed: " + "; ".join(analysis.failures())
            kept = blue[0] if blue and keep_serving else None
            return PromotionDecision(
                False, reason, champion, challenger, champion, analysis, *_where(kept)
            )
        client.set_registered_model_alias(model_name, CHAMPION, challenger)
        first = champion is None
        reason = (
            "first model: promoted after passing analysis"
            if first
            else f"v{challenger} passed analysis: promoted over v{champion}{blue_problem}"
        )
        return PromotionDecision(
            True,
            reason,
            champion,
            challenger,
            challenger,
            analysis,
            *_where(green[0] if keep_serving else None),
        )
    finally:
        _stop_unless_kept(state, (blue, green), keep_serving, client, model_name)


def _where(record: ProcessRecord | None) -> tuple[str | None, int | None]:
    return (record.url, record.pid) if record else (None, None)


def _reuse_kept(
    state: StateFile, champion: str | None, keep_serving: bool, on_step: Callable[[str], None]
) -> ProcessRecord | None:
    """The instance an earlier run kept, if this run keeps serving and it serves the
    champion; every other kept instance is stopped."""
    reused = None
    for record in kept_serving(state):
        if keep_serving and reused is None and champion and served_version(record.url) == champion:
            reused = record
            on_step(f"{record.name} kept by an earlier run still serves v{champion}: kept")
        else:
            stop(state, record)
            on_step(f"stopped {record.name}, kept by an earlier run")
    return reused


def _stop_unless_kept(
    state: StateFile,
    instances: tuple[tuple[ProcessRecord, str] | None, ...],
    keep_serving: bool,
    client,
    model_name: str,
) -> None:
    """Keep only the instance serving the champion, and only when asked to."""
    champion = alias_version(client, model_name, CHAMPION) if keep_serving else None
    for instance in instances:
        if instance is None:
            continue
        record, version = instance
        if champion is not None and version == champion:
            log.info("left running", extra={"url": record.url, "pid": record.pid})
            continue
        stop(state, record)

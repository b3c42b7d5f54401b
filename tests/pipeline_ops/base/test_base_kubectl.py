"""The cluster client, against a fake runner: the command lines it makes, its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipeline_ops.base import commands
from pipeline_ops.base.errors import CommandError
from pipeline_ops.base.kubectl import Kubectl


class Scripted(commands.CommandRunner):
    """Answers each command by the first matching word in it."""

    def __init__(self, answers: dict[str, tuple[int, str, str]]):
        self.answers = answers
        self.calls: list[tuple[list[str], object]] = []

    def run(self, argv, *, stdin, **kwargs):
        words = [str(a) for a in argv]
        self.calls.append((words, stdin))
        for word, (code, out, err) in self.answers.items():
            if word in words:
                return subprocess.CompletedProcess(words, code, stdout=out, stderr=err)
        return subprocess.CompletedProcess(words, 0, stdout="", stderr="")


KUBE = Kubectl(Path("/cfg"), Path("/bin/kubectl"), Path("/bin/kubectl-argo-rollouts"))


def test_listing_every_namespace_puts_the_flag_after_the_verb():
    listing = json.dumps({"items": [{"metadata": {"name": "a"}}]})
    with commands.using(Scripted({"get": (0, listing, "")})) as fake:
        assert KUBE.items("", "pods", "-l", "app=x") == [{"metadata": {"name": "a"}}]
    argv = fake.calls[0][0]
    assert argv[:3] == ["/bin/kubectl", "--kubeconfig", "/cfg"]
    assert argv[3:] == ["get", "pods", "--all-namespaces", "-l", "app=x", "-o", "json"]


def test_apply_sends_the_objects_as_one_list_server_side():
    with commands.using(Scripted({})) as fake:
        KUBE.apply([{"kind": "Namespace"}], namespace="mlops")
    argv, stdin = fake.calls[0]
    assert argv[3:] == ["-n", "mlops", "apply", "--server-side", "--force-conflicts", "-f", "-"]
    assert json.loads(str(stdin))["items"] == [{"kind": "Namespace"}]


def test_a_workload_that_does_not_roll_out_is_named_with_its_pods():
    answers = {"rollout": (1, "", "timed out waiting"), "describe": (0, "ImagePullBackOff", "")}
    with commands.using(Scripted(answers)), pytest.raises(CommandError) as caught:
        KUBE.rolled_out("argocd", "deployment/argocd-server", 5)
    message = str(caught.value)
    assert message.startswith("deployment/argocd-server in argocd did not become ready")
    assert "timed out waiting" in message
    assert message.endswith("ImagePullBackOff")


def test_the_plugin_is_called_as_users_call_it():
    with commands.using(Scripted({})) as fake:
        KUBE.rollouts("mlops", "promote", "model-serving")
    assert fake.calls[0][0] == ["/bin/kubectl-argo-rollouts", "--kubeconfig", "/cfg", "-n",
                                "mlops", "promote", "model-serving"]  # fmt: skip

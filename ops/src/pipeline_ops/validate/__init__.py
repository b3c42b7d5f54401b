"""Offline validation of the delivery: manifests, workflows, Dockerfiles (`make validate`).

Each check is a function ``check(tree) -> list[str]`` returning the problems it found, each
problem naming the file and what to fix. `checks.CHECKS` lists them in the order they run.
"""

"""GitHub's pull-request shape, as data-fetch reads it and the replay server (our stand-in
for api.github.com in tests and `make run`) serves it: one definition for both sides. It is
the contract with a service outside the pipeline, not between its stages, so it lives in the
shared library every image carries (the contracts package needs numpy; data-fetch has none)."""

from __future__ import annotations

# Integer counts of a REST pull request: JSON true/false or "12" must not pass as one.
COUNT_FIELDS: tuple[str, ...] = (
    "number",
    "additions",
    "deletions",
    "changed_files",
    "commits",
    "comments",
    "review_comments",
)
# What the REST list endpoint leaves out: only the full pull request (GET .../pulls/N) has it.
DETAIL_ONLY_FIELDS: tuple[str, ...] = (
    "additions",
    "deletions",
    "changed_files",
    "commits",
    "comments",
    "review_comments",
    "mergeable",
)

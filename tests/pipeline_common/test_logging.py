"""Logs: one JSON object a line when not on a terminal (pods, CI), readable text on one."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

from pipeline_common.logging import configure_logging


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_when_not_a_terminal():
    stream = io.StringIO()
    configure_logging("data-fetch", stream=stream)  # no json_logs: decided by isatty()
    log = logging.getLogger("data_fetch.job")

    log.info("replayed %s", "prs.jsonl", extra={"records_read": 22, "path": Path("/tmp/x")})
    log.warning("quarantined a record", extra={"line": 7, "reason": "number: Field required"})

    first, second = _lines(stream)
    assert first["level"] == "info"
    assert first["stage"] == "data-fetch"
    assert first["logger"] == "data_fetch.job"
    assert first["message"] == "replayed prs.jsonl"
    assert first["records_read"] == 22
    assert first["path"] == "/tmp/x"  # not JSON-serialisable: rendered as text
    assert first["time"].endswith("+00:00")
    assert second["level"] == "warning"
    assert (second["line"], second["reason"]) == (7, "number: Field required")


def test_exceptions_are_kept_inside_the_json_line():
    stream = io.StringIO()
    configure_logging("ml-training", stream=stream)
    try:
        raise ValueError("bad batch")
    except ValueError:
        logging.getLogger("x").exception("training failed")

    (entry,) = _lines(stream)  # a traceback does not spill over several lines
    assert entry["level"] == "error"
    assert entry["message"] == "training failed"
    assert "ValueError: bad batch" in entry["exception"]


def test_level_filters_and_reconfiguring_does_not_duplicate():
    stream = io.StringIO()
    configure_logging("data-fetch", "WARNING", stream=stream)
    configure_logging("data-fetch", "WARNING", stream=stream)
    log = logging.getLogger("data_fetch")

    log.info("hidden")
    log.warning("shown")

    assert [e["message"] for e in _lines(stream)] == ["shown"]


def test_third_party_debug_chatter_is_silenced():
    stream = io.StringIO()
    configure_logging("data-fetch", "DEBUG", stream=stream)

    logging.getLogger("urllib3.connectionpool").debug("Starting new HTTP connection")
    logging.getLogger("pymongo.command").debug("ping")
    logging.getLogger("data_fetch").debug("own debug")

    assert [e["message"] for e in _lines(stream)] == ["own debug"]


def test_text_on_a_terminal():
    stream = Terminal()
    configure_logging("data-fetch", stream=stream)

    logging.getLogger("data_fetch").info("replayed %s", "prs.jsonl")

    output = re.sub(r"\x1b\[[0-9;]*m", "", stream.getvalue())  # colours
    assert "[data-fetch] replayed prs.jsonl" in output
    assert "INFO" in output
    assert not output.lstrip().startswith("{")

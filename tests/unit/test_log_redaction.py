"""What the worker's log formatter removes from every line, and how metrics name answers."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

from producer.core.settings import Settings
from worker import logs, metrics, redaction

SECRET = "whsec_dmlkZW9xdWV1ZS10ZXN0LXdlYmhvb2stc2VjcmV0ISE="


def test_log_lines_lose_secrets_and_url_query_strings() -> None:
    redaction.configure(Settings(api_key="sk-live-123", webhook_secret=SECRET))
    event = {
        "event": "GET https://cdn.example/v.mp4?exp=1&sig=abcdef failed with sk-live-123",
        "reason": ValueError(f"bad key {SECRET.removeprefix('whsec_')}"),
        "count": 3,
    }
    out = logs._redact(None, "info", event)
    assert out["event"] == "GET https://cdn.example/v.mp4?[redacted] failed with [redacted]"
    assert out["reason"] == "bad key [redacted]"
    assert out["count"] == 3


def test_json_format_renders_foreign_lines_as_redacted_json(tmp_path) -> None:
    path = tmp_path / "worker.log"
    settings = Settings(api_key="sk-live-123", webhook_secret=SECRET, log_format="json")
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.configure(settings, logging.INFO, str(path))
        logging.getLogger("celery.test").warning("key %s at %s", "sk-live-123", "http://h/x?sig=1")
        logging.getLogger("httpx").info("HTTP Request: GET http://h/x?sig=2")  # silenced
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, _ = saved
        root.setLevel(saved[1])
    (line,) = path.read_text().splitlines()
    parsed = json.loads(line)
    assert parsed["event"] == "key [redacted] at http://h/x?[redacted]"
    assert parsed["logger"] == "celery.test" and parsed["level"] == "warning"


def test_provider_answers_are_counted_by_status_class_or_error() -> None:
    def count(operation: str, code: str) -> float:
        value = metrics.PROVIDER_REQUESTS.labels("default", operation, code)
        return value._value.get()

    before = count("status", "4xx"), count("status", "error")
    metrics.provider_request("default", "status", SimpleNamespace(status_code=404))
    metrics.provider_request("default", "status", None)
    assert (count("status", "4xx"), count("status", "error")) == (before[0] + 1, before[1] + 1)

"""Redaction: URLs keep scheme, host and path only; configured secrets are blanked."""

import logging
import sys

import pytest

from worker.redaction import RedactingFilter, redact


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        ('HTTP Request: GET https://cdn.example.com/v/1.mp4?exp=9&sig=abc "HTTP/1.1 200 OK"',
         "https://cdn.example.com/v/1.mp4", "sig=abc"),
        ("ConnectError for http://user:pa55@hooks.example.com/h", "hooks.example.com/h", "pa55"),
        ("see https://x.example/#access_token=t0k3n", "https://x.example/", "t0k3n"),
        ("the key sk-live-123456 was echoed", "was echoed", "sk-live-123456"),
    ],
)  # fmt: skip
def test_urls_lose_their_query_and_user_info_and_secrets_are_blanked(text, kept, gone):
    out = redact(text, ["sk-live-123456"])
    assert kept in out and gone not in out


def test_the_log_filter_redacts_the_formatted_message_and_the_traceback():
    try:
        raise ValueError("https://cdn.example.com/f?sig=deadbeef")
    except ValueError:
        record = logging.LogRecord(
            "httpx",
            logging.INFO,
            __file__,
            1,
            "GET %s",
            ("https://cdn.example.com/f?sig=deadbeef",),
            exc_info=sys.exc_info(),
        )
    RedactingFilter().filter(record)
    line = logging.Formatter().format(record)
    assert "deadbeef" not in line and "https://cdn.example.com/f?[redacted]" in line

"""The HTTP API's pure parts: forms as objects, OpenAI's fields as ours, a job as a Video,
and video URL signatures."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from producer.core.errors import ApiError
from producer.core.records import ErrorInfo, JobRecord, JobStatus, Output
from producer.core.settings import Settings
from producer.http.bodies import Upload, unflatten
from producer.http.content import content_url, signature_holds
from producer.http.shapes import video_object, video_request


def test_bracketed_form_names_become_objects_and_lists():
    items = [("prompt", "p"), ("metadata[order]", "17"), ("metadata[user]", "u"),
             ("characters[]", "a"), ("characters[]", "b"), ("storyboard[][prompt]", "one"),
             ("storyboard[][duration]", "2"), ("storyboard[][prompt]", "two"),
             ("storyboard[][duration]", "3"), ("tags", "x"), ("tags", "y"),
             ("input_reference[image_url]", "https://e.x/i.png")]  # fmt: skip
    assert unflatten(items) == {
        "prompt": "p", "metadata": {"order": "17", "user": "u"}, "characters": ["a", "b"],
        "storyboard": [{"prompt": "one", "duration": "2"}, {"prompt": "two", "duration": "3"}],
        "tags": ["x", "y"], "input_reference": {"image_url": "https://e.x/i.png"},
    }  # fmt: skip
    assert unflatten([("s[0][p]", "a"), ("s[1][p]", "b"), ("s[0][d]", "1")]) == {
        "s": [{"p": "a", "d": "1"}, {"p": "b"}]}  # fmt: skip


@pytest.mark.parametrize("items", [[("a", "1"), ("a[b]", "2")], [("a[b]", "1"), ("a[]", "2")],
                                   [("a[5]", "x")]])  # fmt: skip
def test_form_names_that_disagree_are_a_400_naming_the_field(items):
    with pytest.raises(ApiError) as e:
        unflatten(items)
    assert e.value.status == 400 and e.value.param == "a"


def test_openai_fields_become_ours_and_errors_keep_the_callers_names():
    request, names = video_request(
        {"prompt": "p", "seconds": "8", "input_reference": {"image_url": "https://e.x/i.png"}},
        idempotency_key="k1",
    )
    assert request == {"prompt": "p", "duration": 8, "image_url": "https://e.x/i.png",
                       "idempotency_key": "k1"}  # fmt: skip
    assert names == {"duration": "seconds", "image_url": "input_reference"}
    form, _ = video_request({"prompt": "p", "storyboard": '[{"prompt": "a", "duration": 1}]',
                             "characters": "c1"}, form=True)  # fmt: skip
    assert form["storyboard"] == [{"prompt": "a", "duration": 1}] and form["characters"] == ["c1"]
    numbers, _ = video_request({"prompt": "p", "priority": "-3", "deadline_s": "90.5"}, form=True)
    assert numbers["priority"] == -3 and numbers["deadline_s"] == 90.5
    # Not numbers: left for the request's validation, which names the field.
    kept, _ = video_request({"prompt": "p", "priority": "high"}, form=True)
    assert kept["priority"] == "high"
    upload = Upload("a.png", "image/png", b"x")
    with_file, names = video_request({"prompt": "p", "input_reference": upload}, form=True)
    assert with_file["image_object"] is upload and names == {"image_object": "input_reference"}
    stored = {"bucket": "b", "key": "videos/job_1.mp4"}
    for body, param in [({"seconds": "4.5"}, "seconds"), ({"seconds": 4, "duration": 4}, "seconds"),
                        ({"input_reference": upload, "image_url": "https://e.x/i.png"},
                         "input_reference"),
                        ({"image_object": stored}, "image_object"),  # only an upload sets it
                        ({"idempotency_key": "other"}, "Idempotency-Key")]:  # fmt: skip
        with pytest.raises(ApiError) as e:
            video_request({"prompt": "p", **body}, idempotency_key="k1")
        assert e.value.param == param


def _record(**fields):
    base = {"id": "job_1", "request": {"model": "sora", "prompt": "p", "size": "64x48",
            "duration": 2}, "created_at": "2026-12-05T10:00:00.000Z"}  # fmt: skip
    return JobRecord(**{**base, **fields})


@pytest.mark.parametrize(("status", "word"), [
    (JobStatus.QUEUED, "queued"), (JobStatus.SUBMITTED, "in_progress"),
    (JobStatus.PROCESSING, "in_progress"), (JobStatus.FINALIZING, "in_progress"),
    (JobStatus.COMPLETED, "completed"), (JobStatus.FAILED, "failed"),
    (JobStatus.CANCELLED, "failed")])  # fmt: skip
def test_every_status_reads_in_openais_words(status, word):
    video = video_object(_record(status=status), content_url="u", record_ttl_s=60)
    assert video["status"] == word
    assert (video["error"] or {}).get("code") == ("cancelled" if status is JobStatus.CANCELLED
                                                  else None)  # fmt: skip


def test_a_completed_job_carries_the_routers_video_block_and_unix_times():
    output = Output(bucket="b", key="videos/job_1.mp4", size_bytes=10, sha256="0" * 64,
                    width=64, height=48, duration_s=2.0)  # fmt: skip
    record = _record(status=JobStatus.COMPLETED, output=output, progress=100,
                     finished_at="2026-12-05T10:01:00.000Z")  # fmt: skip
    video = video_object(record, content_url="https://gw/v1/videos/job_1/content", record_ttl_s=60)
    assert video["video"] == {"url": "https://gw/v1/videos/job_1/content", "duration": 2.0,
                              "width": 64, "height": 48}  # fmt: skip
    assert (video["created_at"], video["completed_at"], video["expires_at"]) == (
        1796464800, 1796464860, 1796464920)  # fmt: skip
    assert (video["seconds"], video["size"], video["progress"]) == ("2", "64x48", 100)
    failed = video_object(_record(status=JobStatus.FAILED, error=ErrorInfo(code="timeout",
                          message="too slow")), content_url="u", record_ttl_s=60)  # fmt: skip
    assert failed["error"] == {"code": "timeout", "message": "too slow"} and not failed["video"]


def test_a_signed_video_url_holds_for_its_job_until_it_expires():
    s = Settings(http_url_secret=SecretStr("s3cret"), http_url_ttl_s=60)
    url = content_url(s, "http://gw:8080/", "job_1", now_s=1000.0)
    query = dict(p.split("=") for p in url.split("?")[1].split("&"))
    assert url.startswith("http://gw:8080/v1/videos/job_1/content?")
    assert signature_holds(s, "job_1", query["expires"], query["signature"], 1059.0)
    assert not signature_holds(s, "job_1", query["expires"], query["signature"], 1061.0)
    assert not signature_holds(s, "job_2", query["expires"], query["signature"], 1000.0)
    assert "s3cret" not in url
    unsigned = content_url(Settings(), "http://gw/", "job_1", now_s=1000.0)
    assert unsigned == "http://gw/v1/videos/job_1/content"


def test_the_access_log_blanks_video_url_signatures():
    import logging

    from producer.http.app import RedactSignatures

    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', (
            "127.0.0.1:5", "GET", "/v1/videos/job_1/content?expires=9&signature=abc123", "1.1",
            200), None)  # fmt: skip
    RedactSignatures().filter(record)
    assert "abc123" not in record.getMessage() and "signature=[redacted]" in record.getMessage()


def test_the_services_redis_connections_time_out_unless_the_url_says_otherwise():
    from producer.core.redis_client import client
    from producer.http.calls import with_redis_timeouts

    def timeouts(settings: Settings) -> tuple[float | None, float | None]:
        kw = client(settings).connection_pool.connection_kwargs
        return kw.get("socket_timeout"), kw.get("socket_connect_timeout")

    assert timeouts(with_redis_timeouts(Settings(broker_url="redis://h:6379/0"), 5)) == (5, 5)
    own = Settings(redis_url="redis://h/1?socket_timeout=30")
    assert timeouts(with_redis_timeouts(own, 5)) == (30, 5)  # the URL's own wins
    configured = Settings(broker_url="redis://h:6379/0", redis_timeout_s=9)
    assert timeouts(with_redis_timeouts(configured, 5)) == (9, 9)
    # Through Sentinel too: the primary's connections, and the sentinels' own.
    sentinel = with_redis_timeouts(Settings(broker_url="sentinel://s1:26379;sentinel://s2"), 5)
    assert timeouts(sentinel) == (5, 5)
    sentinels = client(sentinel).connection_pool.sentinel_manager.sentinels
    assert [s.connection_pool.connection_kwargs["socket_timeout"] for s in sentinels] == [5, 5]

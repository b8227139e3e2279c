"""The official openai SDK drives the sandbox's openai flavor end to end."""

from __future__ import annotations

import pytest
from openai import OpenAI

from tests.e2e.sandbox_helpers import API_KEY, probe, running

# The SDK marks its Sora methods deprecated (shutdown announced for 2026-09-24); the shapes are
# what matter here, and pytest runs with warnings as errors.
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")


def test_the_openai_sdk_creates_polls_and_downloads_a_video(tmp_path):
    with (
        running(flavor="openai") as (sb, client),
        OpenAI(base_url=f"{client.base_url}/v1", api_key=API_KEY, max_retries=0) as sdk,
    ):
        video = sdk.videos.create(prompt="a cat playing piano", model="sora-2", seconds="4",
                                  size="1280x720")  # fmt: skip
        assert video.status == "queued" and video.object == "video"
        assert sdk.videos.retrieve(video.id).id == video.id

        done = sdk.videos.create_and_poll(prompt="a jazz club", model="sora-2-pro", seconds="8",
                                          size="720x1280")  # fmt: skip
        assert done.status == "completed" and done.progress == 100
        assert (done.seconds, done.size, done.model) == ("8", "720x1280", "sora-2-pro")

        content = sdk.videos.download_content(done.id)
        path = tmp_path / "out.mp4"
        content.write_to_file(path)
        assert probe(path.read_bytes()) == (720, 1280, 8.0)

        tasks = sb.stats()["tasks"]
        assert tasks[done.id]["downloads"] == 1 and tasks[done.id]["status_queries"] >= 1
        assert sb.stats()["totals"]["tasks"] == 2


def test_the_sdk_sees_validation_errors_and_failed_videos():
    import openai

    with (
        running(flavor="openai", fail_rate=1.0) as (_, client),
        OpenAI(base_url=f"{client.base_url}/v1", api_key=API_KEY, max_retries=0) as sdk,
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.videos.create(prompt="x", model="sora-2", seconds="5")  # type: ignore[arg-type]
        assert "duration" in str(caught.value)
        failed = sdk.videos.create_and_poll(prompt="x", model="sora-2")
        assert failed.status == "failed" and failed.error and failed.error.message
        with (
            OpenAI(base_url=f"{client.base_url}/v1", api_key="sk-wrong", max_retries=0) as bad,
            pytest.raises(openai.AuthenticationError),
        ):
            bad.videos.retrieve(failed.id)

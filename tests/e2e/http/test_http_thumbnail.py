"""A video's poster frame through a real `videoqueue serve`: OpenAI's SDK's
`download_content(variant="thumbnail")`, tenant isolation, the signed URL, and a 404 in OpenAI's
error shape when the video has no poster."""

from __future__ import annotations

import io

import httpx
import openai
import pytest
from openai import OpenAI
from PIL import Image

from producer import get

pytestmark = pytest.mark.filterwarnings("ignore:The Sora API is scheduled:DeprecationWarning")


def test_the_openai_sdk_downloads_the_thumbnail_and_another_tenant_gets_a_404(
    make_gateway, s3_client
):
    gw = make_gateway()
    with OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key("acme"), max_retries=0) as sdk:
        done = sdk.videos.create_and_poll(
            prompt="a cat playing piano", model="sora-2", seconds="4", size="720x1280"
        )
        assert done.status == "completed"
        thumbnail = sdk.videos.download_content(done.id, variant="thumbnail")
        assert thumbnail.response.headers["content-type"] == "image/jpeg"
        poster = get(done.id, settings=gw.pipeline.settings).output.poster
        stored = s3_client.get_object(Bucket=poster.bucket, Key=poster.key)["Body"].read()
        assert thumbnail.content == stored
        image = Image.open(io.BytesIO(thumbnail.content))
        image.load()
        assert image.size == (poster.width, poster.height) == (270, 480)  # portrait

        with pytest.raises(openai.NotFoundError):  # not kept
            sdk.videos.download_content(done.id, variant="spritesheet")
        with pytest.raises(openai.BadRequestError):
            sdk.videos.download_content(done.id, variant="poster")  # type: ignore[arg-type]

    with gw.client("globex") as other:
        theirs = other.get(f"/v1/videos/{done.id}/content?variant=thumbnail")
        unknown = other.get("/v1/videos/job_0/content?variant=thumbnail")
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.json()["error"]["code"] == unknown.json()["error"]["code"] == "not_found"
        assert stored not in theirs.content

    with gw.client("acme") as http:
        video_url = http.get(f"/v1/videos/{done.id}").json()["video"]["url"]
    # No key: the signed video.url fetches the thumbnail too (a page's <img> can use it).
    signed = httpx.get(f"{video_url}&variant=thumbnail")
    assert signed.status_code == 200 and signed.content == stored
    assert signed.headers["content-disposition"] == f'inline; filename="{done.id}.jpg"'


def test_a_video_without_a_poster_answers_the_thumbnail_with_a_404_saying_why(make_gateway):
    gw = make_gateway(sandbox={"garbled_frames_rate": 1.0})
    with OpenAI(base_url=f"{gw.url}/v1", api_key=gw.key("acme"), max_retries=0) as sdk:
        done = sdk.videos.create_and_poll(prompt="static", model="sora-2", seconds="4")
        assert done.status == "completed"  # a poster is best effort
        with pytest.raises(openai.NotFoundError) as refused:
            sdk.videos.download_content(done.id, variant="thumbnail")
        error = refused.value.body
        assert error["code"] == "variant_not_available" and error["param"] == "variant"
        assert "could not be decoded for a poster" in error["message"]
        assert sdk.videos.download_content(done.id).response.headers["content-type"] == (
            "video/mp4"
        )

"""The sandbox's parts without a server: config, timing, lazy state, MP4s and byte ranges."""

from __future__ import annotations

import io
import json
import random
import struct

import av
import pytest
from pydantic import ValidationError

from ops.sandbox import Sandbox, SandboxConfig
from ops.sandbox.files import Mp4Body, UrlSigner, parse_range
from ops.sandbox.media import break_moov, encode_mp4, free_box_header
from ops.sandbox.oddities import status_response
from ops.sandbox.state import Phase, SandboxState, key_fingerprint
from ops.sandbox.validation import parse_videos_create


def _spec(model: str = "sora", duration: int = 4):
    body = {"model": model, "prompt": "x", "duration": duration}
    if model.startswith("sora-2"):
        body["size"] = "1280x720"
    return parse_videos_create(body, models=set(SandboxConfig().timings), default_model="sora")


def _task(state: SandboxState, config: SandboxConfig, spec, now: float = 1000.0):
    task, _ = state.create_task(key="k", kind="videos", spec=spec, idempotency_key=None,
                                config=config, now=now, task_id=state.new_id("t_"))  # fmt: skip
    return task


def test_the_public_surface_is_exactly_sandbox_and_its_config():
    import ops.sandbox

    assert sorted(ops.sandbox.__all__) == ["Sandbox", "SandboxConfig"]


def test_a_profile_loads_from_json_or_toml_and_flags_win(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"flavor": "openai", "error_rate": 0.1}))
    (tmp_path / "p.toml").write_text(
        'flavor = "openai"\nmax_concurrent = 2\n'
        "[timings.sora-2]\nbase_s = 20\nper_video_second_s = 2\n"
    )
    assert SandboxConfig.from_file(tmp_path / "p.json").error_rate == 0.1
    toml = SandboxConfig.from_file(tmp_path / "p.toml", flavor="router")
    assert (toml.flavor, toml.max_concurrent) == ("router", 2)
    assert toml.timings["sora-2"].base_s == 20 and "sora" in toml.timings  # merged, not replaced


def test_a_typo_in_a_knob_is_an_error_not_a_silent_default(tmp_path):
    (tmp_path / "p.json").write_text(json.dumps({"error_rat": 0.1}))
    with pytest.raises(ValidationError):
        SandboxConfig.from_file(tmp_path / "p.json")
    with pytest.raises(ValidationError):
        Sandbox(SandboxConfig()).configure(truncate_rate=1.5)


def test_default_timings_finish_a_4s_sora_clip_within_a_minute_and_pro_takes_longer():
    config = SandboxConfig()
    state = SandboxState(config)
    sora = [_task(state, config, _spec("sora")).generation_s for _ in range(200)]
    pro = [_task(state, config, _spec("sora-pro")).generation_s for _ in range(200)]
    assert max(sora) < 60 and min(sora) > 1
    assert min(pro) > max(sora) * 0.9 and sum(pro) > 1.5 * sum(sora)
    assert len(set(sora)) > 100  # jitter


def test_fast_mode_finishes_the_slowest_clip_well_under_a_second():
    config = SandboxConfig(fast=True)
    state = SandboxState(config)
    assert max(_task(state, config, _spec("sora-pro", 20)).generation_s for _ in range(50)) < 0.6


def test_a_tasks_status_is_computed_lazily_from_its_timestamps():
    config = SandboxConfig(jitter=0, queued_fraction=0.25)
    state = SandboxState(config)
    task = _task(state, config, _spec("sora", 4), now=1000.0)  # 6 + 1.5 * 4 = 12 s
    assert task.generation_s == pytest.approx(12.0)
    assert task.phase(1001.0) is Phase.QUEUED and task.progress(1001.0) == 0
    assert task.phase(1006.0) is Phase.RUNNING and 0 < task.progress(1006.0) < 100
    assert task.progress(1010.0) > task.progress(1006.0)
    assert task.phase(1012.0) is Phase.COMPLETED and task.progress(1012.0) == 100
    assert task.ready_at == pytest.approx(1012.0)
    stats = state.stats(1011.0)["tasks"][task.id]
    assert stats["status"] == "in_progress" and stats["ready_at"] is None


def test_the_same_seed_gives_the_same_fates_and_ids():
    def run(seed: int) -> list[tuple[str, str]]:
        config = SandboxConfig(seed=seed, fail_rate=0.3, stuck_rate=0.3)
        state = SandboxState(config)
        return [(t.id, t.fate.value) for t in (_task(state, config, _spec()) for _ in range(30))]

    assert run(3) == run(3) != run(4)
    assert {fate for _, fate in run(3)} == {"ok", "fail", "stuck"}


def test_ten_thousand_tasks_cost_little():
    config = SandboxConfig(fast=True)
    state = SandboxState(config)
    spec = _spec()
    for i in range(10_000):
        state.create_task(key="k", kind="videos", spec=spec, idempotency_key=None,
                          config=config, now=1000.0 + i / 1000, task_id=f"t{i}")  # fmt: skip
    stats = state.stats(2000.0)
    assert stats["totals"]["tasks"] == 10_000 and stats["keys"][key_fingerprint("k")]["active"] == 0


@pytest.mark.parametrize("shape", [(16, 16, 1), (98, 64, 3), (1280, 720, 4)])
def test_an_encoded_clip_reads_back_with_its_shape_after_a_free_box(shape):
    width, height, duration = shape
    tagged = Mp4Body(clip=encode_mp4(width, height, duration), task_id="t1", padding=5000)
    data = b"".join(bytes(c) for c in tagged.iter_range(0, tagged.size))
    assert len(data) == tagged.size and b"task=t1" in data
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (width, height)
        assert container.duration / 1e6 == duration


def test_a_free_box_over_4_gib_uses_the_64_bit_size():
    assert free_box_header(10) == struct.pack(">I4s", 18, b"free")
    size, kind, large = struct.unpack(">I4sQ", free_box_header(1 << 32))
    assert (size, kind, large) == (1, b"free", (1 << 32) + 16)


def test_any_byte_range_of_a_padded_body_matches_the_whole():
    body = Mp4Body(clip=bytes(range(256)) * 40, task_id="abc", padding=(1 << 20) + 7)
    whole = b"".join(bytes(c) for c in body.iter_range(0, body.size))
    rng = random.Random(0)
    for _ in range(50):
        start = rng.randrange(body.size)
        stop = rng.randrange(start, body.size + 1)
        assert b"".join(bytes(c) for c in body.iter_range(start, stop)) == whole[start:stop]


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("bytes=0-9", (0, 10)), ("bytes=5-", (5, 100)), ("bytes=-10", (90, 100)),
     ("bytes=90-500", (90, 100)), ("bytes=100-", "unsatisfiable"), ("bytes=0-1,5-6", None),
     ("items=0-1", None)],
)  # fmt: skip
def test_parse_range(header, expected):
    assert parse_range(header, 100) == expected


def test_signed_links_expire_and_resist_tampering():
    signer = UrlSigner()
    query = dict(p.split("=") for p in signer.query("t1", 60, now=1000.0).split("&"))
    assert signer.check("t1", query["exp"], query["sig"], now=1059.0) is None
    assert signer.check("t1", query["exp"], query["sig"], now=1061.0) == "link expired"
    assert signer.check("t2", query["exp"], query["sig"], now=1000.0) == "invalid signature"
    never = dict(p.split("=") for p in signer.query("t1", None, now=0).split("&"))
    assert signer.check("t1", never["exp"], never["sig"], now=1e12) is None
    assert UrlSigner().check("t1", query["exp"], query["sig"], now=1000.0) is not None


_ODDITY_KNOBS = ["retry_after", "html_rate", "non_json_rate", "missing_status_rate",
                 "nan_progress_rate", "numeric_error_code", "url_as_list", "broken_moov_rate",
                 "garbled_frames_rate", "short_content_length_rate"]  # fmt: skip


def test_every_oddity_is_off_by_default_and_a_header_breaking_retry_after_is_refused():
    config = SandboxConfig()
    assert not any(getattr(config, knob) for knob in _ODDITY_KNOBS)
    assert config.retry_after is None
    assert SandboxConfig(retry_after="Wed, 99 Foo").retry_after == "Wed, 99 Foo"
    for bad in ["1\r\nSet-Cookie: x=1", "soon\n", " 5", "5 ", "caf\u00e9"]:
        with pytest.raises(ValidationError):
            SandboxConfig(retry_after=bad)


@pytest.mark.parametrize("shape", [(64, 48, 2), (1280, 720, 4)])
def test_a_broken_moov_keeps_ftyp_and_length_and_does_not_open(shape):
    clip = encode_mp4(*shape)
    broken = break_moov(clip)
    ftyp_size, kind = struct.unpack(">I4s", clip[:8])
    assert kind == b"ftyp" and broken[:ftyp_size] == clip[:ftyp_size]
    assert len(broken) == len(clip) and b"moov" in broken
    with pytest.raises(av.error.InvalidDataError):
        av.open(io.BytesIO(broken))
    with pytest.raises(ValueError, match="moov"):
        break_moov(b"\0\0\0\x10ftypisom\0\0\0\0")


def test_html_beats_non_json_and_missing_status_and_nan_share_an_answer():
    def answer(**rates: float) -> tuple[str, bytes, dict[str, int]]:
        sb = Sandbox(SandboxConfig(**rates))
        body = {"id": "t1", "object": "video", "status": "completed", "progress": 100}
        response = status_response(sb, body, {"x-kept": "1"})
        sb.close()
        assert response.headers["x-kept"] == "1"
        return response.media_type or "", bytes(response.body), sb.stats()["totals"]["faults"]

    everything = {"html_rate": 1.0, "non_json_rate": 1.0, "missing_status_rate": 1.0}
    media_type, _, faults = answer(**everything, nan_progress_rate=1.0)
    assert media_type == "text/html" and faults == {"html": 1}
    _, text, faults = answer(non_json_rate=1.0, nan_progress_rate=1.0)
    assert text == b'{"id":"t1","object":"video","stat' and faults == {"non_json": 1}
    _, text, faults = answer(missing_status_rate=1.0, nan_progress_rate=1.0)
    assert text == b'{"id":"t1","object":"video","progress":NaN}'
    assert faults == {"missing_status": 1, "nan_progress": 1}
    _, text, faults = answer()
    assert json.loads(text)["status"] == "completed" and faults == {}


def test_an_opaque_link_hides_its_expiry_and_is_checked_like_a_plain_one():
    signer = UrlSigner()
    token = signer.query("t1", 60, now=1000.0, opaque=True).removeprefix("token=")
    assert "1060" not in token  # the expiry is not in the URL in clear
    assert signer.check_query("t1", {"token": token}, now=1059.0) is None
    assert signer.check_query("t1", {"token": token}, now=1061.0) == "link expired"
    assert signer.check_query("t2", {"token": token}, now=1000.0) == "invalid signature"
    for garbage in ("%%%", "bm90IGEgdG9rZW4", "//8="):
        assert signer.check_query("t1", {"token": garbage}, now=1000.0) is not None

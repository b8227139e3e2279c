"""Scenario 3, copy: a 1 GiB MP4 from the provider into S3 with bounded memory.

A real job runs through a real worker (one pool process): the sandbox serves a 1 GiB file
(``file_padding_bytes``), and ``finalize`` streams it into SeaweedFS with the product's
multipart upload. Measured:

- peak RSS growth of the worker's process tree while it copies, sampled every 50 ms by
  psutil, above its RSS after a small warm-up job (so one-time imports and clients, which
  any job pays, are not counted as the copy's);
- throughput: the object's size over the ``finalize`` task's run time (instrumented trace).

The comparison is boto3's ``upload_file`` (default TransferConfig) of the same bytes, read
back from S3 to local disk first, into the same bucket, in the same run.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.harness import (
    ProcessTree,
    Sampler,
    Services,
    deployment,
    host_probes,
    log,
    read_trace,
    spent,
    wait_until,
)
from bench.model import Row, ScenarioResult
from producer import enqueue, get
from producer.core.records import TERMINAL, JobStatus

NAME = "copy"
MIB = 1024 * 1024


@dataclass(frozen=True)
class Scale:
    """How big the scenario runs.

    Attributes:
        file_bytes: Size of the provider's file.
        timeout_s: Longest wait for the copy.
        part_size_bytes: VIDEOQUEUE_S3_PART_SIZE_BYTES for the worker.
        parts_in_flight: VIDEOQUEUE_S3_PARTS_IN_FLIGHT for the worker.
    """

    file_bytes: int
    timeout_s: float
    part_size_bytes: int = 6 * MIB
    parts_in_flight: int = 5


FULL = Scale(file_bytes=1024 * MIB, timeout_s=300)
SMOKE = Scale(file_bytes=24 * MIB, timeout_s=60)


def run(services: Services, scale: Scale) -> ScenarioResult:
    """Run the scenario at scale and return its rows, notes and chart data."""
    result = ScenarioResult(
        name=NAME,
        title="Copy: a 1 GiB MP4 from the provider into S3",
        smoke=services.smoke,
        params={**asdict(scale)},
    )
    env = {
        "VIDEOQUEUE_S3_PART_SIZE_BYTES": str(scale.part_size_bytes),
        "VIDEOQUEUE_S3_PARTS_IN_FLIGHT": str(scale.parts_in_flight),
    }
    with deployment(services, NAME, sandbox={"fast": True}, env=env) as dep:
        worker = dep.start_worker(concurrency=1)
        tree = ProcessTree(worker.pid)
        request = {"model": "sora", "prompt": "a long take", "size": "64x48", "duration": 2}

        def finish(job_id: str, timeout_s: float) -> None:
            if not wait_until(
                lambda: get(job_id, settings=dep.settings).status in TERMINAL,
                timeout_s,
                every_s=0.2,
                what=f"job {job_id}",
            ):
                raise TimeoutError(f"{NAME}: job {job_id} did not end in {timeout_s:.0f} s")
            record = get(job_id, settings=dep.settings)
            if record.status is not JobStatus.COMPLETED:
                raise RuntimeError(f"{NAME}: job {job_id} ended {record.status}: {record.error}")

        # Warm-up: the first finalize imports PyAV and builds the S3 client. Its file is the
        # clip alone, so padding it by the difference makes the big one file_bytes exactly.
        warm_id = enqueue(request, settings=dep.settings)
        finish(warm_id, 60)
        clip = get(warm_id, settings=dep.settings).output
        assert clip is not None
        dep.sandbox.configure(file_padding_bytes=scale.file_bytes - clip.size_bytes)
        time.sleep(0.5)
        client = dep.redis()
        probes = {"rss": tree.rss_bytes, "cpu": tree.cpu_s, **host_probes(client)}
        with Sampler(probes, interval_s=0.05) as sampler:
            t0 = time.time()
            job_id = enqueue(request, settings=dep.settings)
            finish(job_id, scale.timeout_s)
        record = get(job_id, settings=dep.settings)
        assert record.output is not None
        size = record.output.size_bytes
        run_ = next(
            r for r in read_trace(dep.trace_dir).runs if r.task == "finalize" and r.job_id == job_id
        )
        if run_.ended_at is None:
            raise RuntimeError(f"{NAME}: the trace has no end for finalize of {job_id}")
        ended_at = run_.ended_at
        ours_s = ended_at - run_.started_at
        log(f"{NAME}: worker copied {size / MIB:.0f} MiB in {ours_s:.1f} s; now boto3")
        theirs_s = _upload_file_s(services, record.output.key, size)
        client.close()

    rss = sampler.series["rss"]

    def cores(name: str) -> float:
        return round(spent(sampler.series[name], run_.started_at, ended_at) / ours_s, 2)

    before = sampler.first("rss")
    during = [v for t, v in rss if run_.started_at <= t <= ended_at] or [before]
    growth = max(during) - before
    ours_rate, theirs_rate = size / ours_s / MIB, size / theirs_s / MIB
    label = f"{size / MIB:,.0f} MiB"
    result.rows += [
        Row(
            NAME,
            f"worker peak RSS growth while copying {label}",
            growth / MIB,
            "MiB",
            None,
            "",
            "< 64 MiB",
            growth < 64 * MIB,
        ),
        Row(
            NAME,
            f"throughput, {label} provider -> S3",
            ours_rate,
            "MiB/s",
            theirs_rate,
            "boto3 upload_file from local disk",
            ">= 80 % of upload_file",
            ours_rate >= 0.8 * theirs_rate,
        ),
    ]
    result.params.update(
        {
            "object_bytes": size,
            "finalize_s": round(ours_s, 2),
            "upload_file_s": round(theirs_s, 2),
            "rss_before_mib": round(before / MIB, 1),
            "rss_peak_mib": round(max(during) / MIB, 1),
            "cores_while_copying": {
                "worker": cores("cpu"),
                "sandbox": cores("sandbox_cpu"),
                "seaweedfs": cores("s3_cpu"),
            },
        }
    )
    used = result.params["cores_while_copying"]
    result.notes += [
        f"Worker settings: `VIDEOQUEUE_S3_PART_SIZE_BYTES={scale.part_size_bytes}` "
        f"({scale.part_size_bytes // MIB} MiB), `VIDEOQUEUE_S3_PARTS_IN_FLIGHT="
        f"{scale.parts_in_flight}`, one pool process. The growth counts each part once "
        "in the read buffer, once as the bytes handed to boto3 and again while botocore "
        "sends it, so it is about 1.5 x parts in flight + 2 parts, more than the "
        "(parts in flight + 2) x part size the settings' comment promises. In trial runs "
        "8 MiB x 2 (the default) copied at about 126 MiB/s with 39 MiB of growth, 8 MiB x 4 "
        "at 135-147 MiB/s with 61 MiB, and 5 MiB x 8 at 145 MiB/s with 75 MiB: this "
        "setting is the fastest that keeps a margin under 64 MiB.",
        f"While copying, the worker used {used['worker']:.2f} cores (reading the stream, "
        f"sha256, copying into parts), SeaweedFS {used['seaweedfs']:.2f} and the sandbox "
        f"serving the file {used['sandbox']:.2f}, on a 2-core host. boto3's `upload_file` "
        "reads a file the page cache already holds and sends it with 10 threads, so "
        "SeaweedFS gets nearly both cores."
        + (
            ""
            if ours_rate >= 0.8 * theirs_rate
            else " **What limits the throughput:** CPU. SeaweedFS spent "
            f"{used['seaweedfs']:.2f} cores to store {ours_rate:.0f} MiB/s; what our path "
            "spends on the download side comes out of the same two cores. **What would fix "
            "it** (worker/storage.py, worker/tasks.py `_copy`): "
            "fewer copies per byte: read with `iter_raw()` (httpx's `iter_bytes(n)` re-chunks "
            "64 KiB reads by joining them), collect a part as a list of chunks joined once "
            "instead of `buffer += chunk` then `bytes(buffer)`, and hand boto3 that one "
            "object. On a host where the provider is not local (production) the sandbox's "
            "share is free as well."
        ),
    ]
    result.series = {
        "rss": [[round(t - t0, 3), v] for t, v in rss],
        "copy_window": [round(run_.started_at - t0, 3), round(ended_at - t0, 3)],
    }
    return result


def _upload_file_s(services: Services, key: str, size: int) -> float:
    """Seconds boto3's upload_file takes to put the object at key, from local disk, back in.

    The object is first read back to a local file (not timed); both objects are deleted.
    """
    client = services.s3.client()
    copy_key = f"vqbench/upload-file-{time.time_ns()}.mp4"
    try:
        with tempfile.TemporaryDirectory(prefix="vqbench-copy-") as tmp:
            path = Path(tmp) / "video.mp4"
            client.download_file(services.bucket, key, str(path))
            if path.stat().st_size != size:
                raise RuntimeError(f"read back {path.stat().st_size} bytes of {size}")
            start = time.perf_counter()
            client.upload_file(str(path), services.bucket, copy_key)
            return time.perf_counter() - start
    finally:
        for k in (key, copy_key):
            client.delete_object(Bucket=services.bucket, Key=k)
        client.close()

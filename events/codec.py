"""How a job travels inside a dramatiq message, and back.

The bridge puts ``[job_to_args(job)]`` in the message's ``args``: one
JSON-native dict whose ``kind`` names the job type, datetimes as RFC 3339
strings. Workers call :func:`decode_job` on it. :func:`encode_job` gives the
same object as JSON bytes, for dead-letter records and logs.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from events.errors import InvalidJob
from events.jobs import Job

__all__ = ["decode_job", "encode_job", "job_to_args"]

_ENCODER = msgspec.json.Encoder()
_DECODER: msgspec.json.Decoder[Job] = msgspec.json.Decoder(Job)


def encode_job(job: Job) -> bytes:
    """Return ``job`` as a JSON object (bytes) carrying its ``kind``."""
    return _ENCODER.encode(job)


def job_to_args(job: Job) -> dict[str, Any]:
    """Return ``job`` as a JSON-native dict: the single argument of its dramatiq message."""
    args: dict[str, Any] = msgspec.to_builtins(job)
    return args


def decode_job(obj: Mapping[str, Any] | bytes | str) -> Job:
    """Rebuild a job from :func:`job_to_args` output or :func:`encode_job` bytes.

    Raises:
      InvalidJob: ``obj`` is not a job; the reason has the JSON path of the bad field.
    """
    try:
        if isinstance(obj, bytes | str):
            return _DECODER.decode(obj)
        job: Job = msgspec.convert(obj, Job)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise InvalidJob(f"not a job: {exc}") from None
    return job

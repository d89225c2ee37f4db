"""Shards as Dagster partitions: one dynamic partition per shard of a planned job.

A key names the job and the shard, ``<job name>/<shard index, 5 digits>`` (``prompts/00003``),
so shards of different jobs never share a key and each partition's history in the UI belongs to
exactly one job. Job names are short, path-safe words: they also name the job's output folder.
"""

from __future__ import annotations

import re

import dagster as dg

SHARDS_NAME = "batchgen_shards"
SHARDS = dg.DynamicPartitionsDefinition(name=SHARDS_NAME)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NOT_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")


def check_job_name(name: str) -> str:
    """name unchanged, or ValueError naming the field when it cannot name a job."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise ValueError(
            f"name must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or "
            f"digit, no '..'), got {name!r}"
        )
    return name


def job_name_from_url(url: str) -> str:
    """A job name derived from the last part of a dataset or output URL: without its file
    extension, every character a name cannot hold replaced by '-'
    (``s3://b/in/day 1.parquet`` -> ``day-1``)."""
    last = url.rstrip("/").rsplit("/", 1)[-1]
    stem = last.rsplit(".", 1)[0] if "." in last.lstrip(".") else last
    name = _NOT_NAME_CHARS.sub("-", stem).strip("-._")[:64]
    if not name:
        raise ValueError(f"name: cannot derive a job name from {url!r}; set name")
    return check_job_name(name)


def shard_key(job_name: str, index: int) -> str:
    return f"{check_job_name(job_name)}/{index:05d}"


def parse_shard_key(key: str) -> tuple[str, int]:
    """(job name, shard index) of a partition key made by `shard_key`."""
    name, _, index = key.rpartition("/")
    if not name or not index.isdigit():
        raise ValueError(f"partition key {key!r} is not <job name>/<shard index>")
    return check_job_name(name), int(index)


def job_shard_keys(instance: dg.DagsterInstance, job_name: str) -> list[str]:
    """The registered partition keys of one job's shards."""
    prefix = f"{job_name}/"
    return [k for k in instance.get_dynamic_partitions(SHARDS_NAME) if k.startswith(prefix)]

"""The job's configuration: frozen dataclasses per concern, one `JobConfig` over them.

A JobConfig comes from a plain dict (`JobConfig.from_dict`, the form Dagster run config uses),
from YAML (`load_job_config`, the same dict in a file) or from CLI flags (the CLI builds the
dict). Every user-facing value is checked in `__post_init__`; errors are ValueErrors that name
the field with its section, e.g. ``input.prompt_column must be a non-empty string``. Nothing
here touches files except `load_job_config`, and nothing reads the dataset or the model.

Dict form (every section and key optional except input.url, output.url and model)::

    model: smollm2                # a registry name (engine.model_assets) or a path/URL
    input:  {url, format: parquet|openai-jsonl, id_column, prompt_column, messages_column,
             carry_columns: [...], override_columns: {max_tokens: COLUMN, ...}, batch_rows}
    output: {url, format: parquet|openai-jsonl, rows_per_part, overwrite}
    sampling: {max_tokens, temperature, top_p, top_k, seed, stop, logprobs, ...}
    sharding: {num_shards | rows_per_shard}
    grouping: {dedup, prefix_grouping}
    engine: {kv_cache_dtype, max_num_batched_tokens, block_size, max_num_seqs,
             enable_prefix_caching, shared_prefix_attention, overlap_scheduling,
             num_blocks, dtype, device, seed, speculative}
    storage_options: {endpoint_url, ...}   # fsspec options; credentials from the environment
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from engine import SamplingParams

# Job default: greedy, so outputs are reproducible and exact duplicates can be generated once.
DEFAULT_SAMPLING = SamplingParams(max_tokens=256, temperature=0.0)

# storage_options keys that carry secrets: they must come from the environment instead.
_SECRET_KEYS = frozenset(
    {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key", "session_token"}
)

# The fixed record layout the OpenAI batch JSONL reader produces (see pipeline.readers).
JSONL_ID_COLUMN = "custom_id"
JSONL_PROMPT_COLUMN = "prompt"
JSONL_MESSAGES_COLUMN = "messages"
JSONL_OVERRIDES = ("max_tokens", "temperature", "top_p", "seed", "stop")


class DataFormat(enum.Enum):
    PARQUET = "parquet"
    OPENAI_JSONL = "openai-jsonl"

    @property
    def suffixes(self) -> tuple[str, ...]:
        return (".parquet", ".pq") if self is DataFormat.PARQUET else (".jsonl",)


def _data_format(section: str, value: Any) -> DataFormat:
    if isinstance(value, DataFormat):
        return value
    try:
        return DataFormat(value)
    except ValueError:
        known = ", ".join(f.value for f in DataFormat)
        raise ValueError(f"{section}.format must be one of {known}, got {value!r}") from None


def _check_name(name: str, value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_positive(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ColumnMap:
    """Which input column holds what; the same for both input formats once resolved."""

    id_column: str | None
    prompt_column: str | None
    messages_column: str | None
    carry_columns: tuple[str, ...]
    override_columns: tuple[tuple[str, str], ...]  # (sampling parameter, column)
    apply_chat_template: bool = False  # send a plain prompt as one user message

    @property
    def read_columns(self) -> tuple[str, ...]:
        """Every column a reader must return, each once, in a stable order."""
        names = [self.id_column, self.prompt_column, self.messages_column, *self.carry_columns]
        names += [column for _, column in self.override_columns]
        return tuple(dict.fromkeys(n for n in names if n is not None))


@dataclass(frozen=True)
class InputConfig:
    """The dataset: a file, a folder or a glob on any fsspec URL.

    For parquet, prompt_column and/or messages_column name the prompt (a row uses messages
    when that column is set and its value non-null, else prompt); prompt defaults to "prompt".
    For openai-jsonl the layout is fixed by the format (custom_id, body.messages, body.prompt,
    body.max_tokens, ...) and only carry_columns (top-level keys of a line) may be set.
    """

    url: str
    format: DataFormat = DataFormat.PARQUET
    id_column: str | None = None
    prompt_column: str | None = None
    messages_column: str | None = None
    carry_columns: tuple[str, ...] = ()
    override_columns: dict[str, str] = field(default_factory=dict)
    batch_rows: int = 1024  # rows per record batch read
    # Wrap each plain prompt as [{"role": "user", "content": prompt}] and apply the model's chat
    # template: what an instruct model expects (raw text often gets an immediate end of turn).
    apply_chat_template: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.apply_chat_template, bool):
            raise ValueError(
                f"apply_chat_template must be true or false, got {self.apply_chat_template!r}"
            )
        _check_name("url", self.url)
        object.__setattr__(self, "format", _data_format("input", self.format))
        object.__setattr__(self, "carry_columns", tuple(self.carry_columns))
        object.__setattr__(self, "override_columns", dict(self.override_columns))
        for name in ("id_column", "prompt_column", "messages_column"):
            if getattr(self, name) is not None:
                _check_name(name, getattr(self, name))
        for column in self.carry_columns:
            _check_name("carry_columns", column)
        params = {f.name for f in fields(SamplingParams)}
        for param, column in self.override_columns.items():
            if param not in params:
                raise ValueError(
                    f"override_columns: {param!r} is not a sampling parameter "
                    f"(known: {', '.join(sorted(params))})"
                )
            _check_name(f"override_columns.{param}", column)
        _check_positive("batch_rows", self.batch_rows)
        if self.format is DataFormat.OPENAI_JSONL:
            given = [
                n
                for n in ("id_column", "prompt_column", "messages_column", "override_columns")
                if getattr(self, n)
            ]
            if given:
                raise ValueError(
                    f"{given[0]} cannot be set for openai-jsonl input: the format fixes it"
                )

    @property
    def columns(self) -> ColumnMap:
        if self.format is DataFormat.OPENAI_JSONL:
            return ColumnMap(
                id_column=JSONL_ID_COLUMN,
                prompt_column=JSONL_PROMPT_COLUMN,
                messages_column=JSONL_MESSAGES_COLUMN,
                carry_columns=self.carry_columns,
                override_columns=tuple((p, p) for p in JSONL_OVERRIDES),
            )
        prompt = self.prompt_column
        if prompt is None and self.messages_column is None:
            prompt = "prompt"
        return ColumnMap(
            id_column=self.id_column,
            prompt_column=prompt,
            messages_column=self.messages_column,
            carry_columns=self.carry_columns,
            override_columns=tuple(sorted(self.override_columns.items())),
            apply_chat_template=self.apply_chat_template,
        )


@dataclass(frozen=True)
class OutputConfig:
    """Where results go. rows_per_part: a part is committed every this many rows (on a writer
    thread, at most 2 parts in flight), so a crash loses at most ~3x that much work.
    overwrite: redo shards that are already complete."""

    url: str
    format: DataFormat = DataFormat.PARQUET
    rows_per_part: int = 512
    overwrite: bool = False

    def __post_init__(self) -> None:
        _check_name("url", self.url)
        object.__setattr__(self, "format", _data_format("output", self.format))
        _check_positive("rows_per_part", self.rows_per_part)
        if not isinstance(self.overwrite, bool):
            raise ValueError(f"overwrite must be true or false, got {self.overwrite!r}")


class ShardingStrategy(enum.Enum):
    RANGE = "range"  # contiguous row ranges: a shard reads only its rows
    CONTENT = "content"  # hash of the request: duplicates share a shard; every shard scans all


@dataclass(frozen=True)
class ShardingConfig:
    """How rows map to shards: give num_shards or rows_per_shard (neither: shards of at most
    100,000 rows).
    range cuts the dataset into contiguous row ranges; content assigns each row by a hash of
    its request (its id when it has none), so exact duplicates always meet in one shard and
    dedup is dataset-wide, at the price of every shard reading the whole dataset.
    A shard's rows are held in memory while it runs."""

    num_shards: int | None = None
    rows_per_shard: int | None = None
    strategy: ShardingStrategy = ShardingStrategy.RANGE

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "strategy", ShardingStrategy(self.strategy))
        except ValueError:
            known = ", ".join(s.value for s in ShardingStrategy)
            raise ValueError(f"strategy must be one of {known}, got {self.strategy!r}") from None
        _check_positive("num_shards", self.num_shards, allow_none=True)
        _check_positive("rows_per_shard", self.rows_per_shard, allow_none=True)
        if self.num_shards is not None and self.rows_per_shard is not None:
            raise ValueError("num_shards: give num_shards or rows_per_shard, not both")


@dataclass(frozen=True)
class GroupingConfig:
    """dedup: generate exact duplicate requests (deterministic params only) once.
    prefix_grouping: order requests so shared prefixes run close together."""

    dedup: bool = True
    prefix_grouping: bool = True

    def __post_init__(self) -> None:
        for name in ("dedup", "prefix_grouping"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")


@dataclass(frozen=True)
class EngineOptions:
    """Arguments for engine.LLM; None leaves the engine's own default."""

    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int = 8192
    block_size: int = 16
    max_num_seqs: int = 256
    enable_prefix_caching: bool = True
    shared_prefix_attention: bool = True
    overlap_scheduling: bool | None = None  # None: on for CUDA
    num_blocks: int | None = None
    dtype: str = "auto"
    device: str | None = None
    seed: int = 0
    speculative: dict[str, Any] | None = None  # {method: ngram|draft, model, k, ...}

    def __post_init__(self) -> None:
        if self.speculative is not None:
            from engine.llm import speculative_config

            if not isinstance(self.speculative, Mapping):
                raise ValueError(f"speculative: expected a mapping, got {self.speculative!r}")
            object.__setattr__(self, "speculative", dict(self.speculative))
            try:
                speculative_config(self.speculative)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"speculative: {exc}") from None
        if self.kv_cache_dtype not in ("auto", "int8"):
            raise ValueError(f"kv_cache_dtype must be auto or int8, got {self.kv_cache_dtype!r}")
        for name in ("max_num_batched_tokens", "block_size", "max_num_seqs"):
            _check_positive(name, getattr(self, name))
        _check_positive("num_blocks", self.num_blocks, allow_none=True)
        for flag in ("enable_prefix_caching", "shared_prefix_attention"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be true or false, got {getattr(self, flag)!r}")
        if self.overlap_scheduling is not None and not isinstance(self.overlap_scheduling, bool):
            raise ValueError(
                f"overlap_scheduling must be true, false or null, got {self.overlap_scheduling!r}"
            )
        if self.device is not None:
            _check_name("device", self.device)
        _check_name("dtype", self.dtype)

    def llm_kwargs(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class JobConfig:
    """One batch generation job. `fingerprint` identifies what decides the outputs (model,
    input, columns, sampling, sharding, KV dtype) — not the output URL or performance knobs —
    so a rerun resumes only over results of the same job."""

    input: InputConfig
    output: OutputConfig
    model: str
    sampling: SamplingParams = DEFAULT_SAMPLING
    sharding: ShardingConfig = field(default_factory=ShardingConfig)
    grouping: GroupingConfig = field(default_factory=GroupingConfig)
    engine: EngineOptions = field(default_factory=EngineOptions)
    storage_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_name("model", self.model)
        object.__setattr__(self, "storage_options", dict(self.storage_options))
        secrets = sorted(k for k in self.storage_options if k.lower() in _SECRET_KEYS)
        if secrets:
            raise ValueError(
                f"storage_options.{secrets[0]}: credentials come from the environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS), "
                "not from the job config"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> JobConfig:
        """Build from the nested dict form (see the module docstring)."""
        _reject_unknown("", values, {f.name for f in fields(cls)})
        for required in ("input", "output", "model"):
            if values.get(required) is None:
                raise ValueError(f"{required}: missing")
        try:
            sampling = SamplingParams.from_mapping(_section(values, "sampling"), DEFAULT_SAMPLING)
        except ValueError as exc:
            raise ValueError(f"sampling.{exc}") from None
        return cls(
            input=_build(InputConfig, "input", _section(values, "input")),
            output=_build(OutputConfig, "output", _section(values, "output")),
            model=values["model"],
            sampling=sampling,
            sharding=_build(ShardingConfig, "sharding", _section(values, "sharding")),
            grouping=_build(GroupingConfig, "grouping", _section(values, "grouping")),
            engine=_build(EngineOptions, "engine", _section(values, "engine")),
            storage_options=_section(values, "storage_options"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The dict form; `JobConfig.from_dict(c.to_dict()) == c`."""
        return {
            "model": self.model,
            "input": _plain(self.input),
            "output": _plain(self.output),
            "sampling": sampling_to_dict(self.sampling),
            "sharding": _plain(self.sharding),
            "grouping": _plain(self.grouping),
            "engine": _plain(self.engine),
            "storage_options": dict(self.storage_options),
        }

    @property
    def fingerprint(self) -> str:
        decisive = {
            "model": self.model,
            "input": {k: v for k, v in _plain(self.input).items() if k != "batch_rows"},
            "sampling": sampling_to_dict(self.sampling),
            "sharding": _plain(self.sharding),
            "kv_cache_dtype": self.engine.kv_cache_dtype,
        }
        return hashlib.sha256(canonical_json(decisive).encode()).hexdigest()[:16]


def sampling_to_dict(params: SamplingParams) -> dict[str, Any]:
    """SamplingParams as JSON-ready values (tuples become lists)."""
    return {
        f.name: list(v) if isinstance(v := getattr(params, f.name), tuple) else v
        for f in fields(params)
    }


def canonical_json(value: Any) -> str:
    """Stable JSON (sorted keys, no spaces); values JSON cannot hold are written with repr."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), default=repr, ensure_ascii=False
    )


def load_job_config(path: str | Path, overrides: Mapping[str, Any] | None = None) -> JobConfig:
    """Read a YAML job file (a local path) and apply `overrides` (the same nested dict form,
    merged section by section) on top. A relative input/output path stays relative to the
    current directory, as on the command line."""
    import yaml

    text = Path(path).read_text()
    loaded = yaml.safe_load(text) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return JobConfig.from_dict(merge_config_dicts(loaded, overrides or {}))


def merge_config_dicts(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """base updated by overrides; nested mappings merge key by key, other values replace."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge_config_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def _section(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = values.get(name) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{name}: expected a mapping, got {type(section).__name__}")
    return dict(section)


def _reject_unknown(prefix: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{prefix}{unknown[0]}: unknown key (known: {', '.join(sorted(known))})")


def _build(cls: Any, section: str, values: dict[str, Any]) -> Any:
    _reject_unknown(f"{section}.", values, {f.name for f in fields(cls)})
    try:
        return cls(**values)
    except ValueError as exc:
        message = str(exc)
        raise ValueError(
            message if message.startswith(f"{section}.") else f"{section}.{message}"
        ) from None


def _plain(config: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Mapping):
            value = dict(value)
        out[f.name] = value
    return out

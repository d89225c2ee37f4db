#!/usr/bin/env bash
# The README's run command: set up (see .ci/setup.sh), then run the sample job on the bundled
# dataset with SmolLM2-135M-Instruct (GPU if present, else CPU) into ./output/sample.
# A second run generates nothing: finished shards are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. .ci/setup.sh

batchgen plan --config data_samples/sample_job.yaml
batchgen run --config data_samples/sample_job.yaml "$@"
cat <<MSG

Results: ./output/sample (Parquet parts per shard, listed in each shard's manifest).
  . .venv/bin/activate && python -c "import polars as pl; from pipeline.results import read_result_table; print(pl.from_arrow(read_result_table('output/sample')))"
Dagster UI over the same job:
  . .venv/bin/activate && mkdir -p dagster_home && cp jobs/dagster.yaml dagster_home/ \\
    && DAGSTER_HOME=\$PWD/dagster_home dagster dev -m jobs.definitions -h 127.0.0.1 -p 3000
MSG

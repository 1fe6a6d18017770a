#!/bin/sh
# Entry of a remote_dx worker: a Celery worker for `remote_dx.tasks` plus the study sweeper
# (started on `worker_ready`), configured only by RDX_* environment variables.
#
#   RDX_BROKER_URL=redis://redis:6379/0 RDX_DATABASE_URL=postgresql+psycopg://… \
#   RDX_STORAGE_BACKEND=s3 … worker/entrypoint.sh
#
# Extra arguments go to `celery worker` (e.g. --concurrency 4, --pool threads).
# `remote-dx worker` does the same from the CLI; this script is for images and process
# managers that want the plain Celery command line.
set -eu

# exec keeps the PID, so the node name remote-dx-<pid>@<host> matches `remote-dx worker`.

exec celery -A remote_dx.tasks worker \
    --loglevel "${RDX_LOG_LEVEL:-INFO}" \
    --concurrency "${RDX_WORKER_CONCURRENCY:-2}" \
    --queues "${RDX_BROKER_QUEUE:-remote_dx}" \
    --hostname "remote-dx-$$@%h" \
    "$@"

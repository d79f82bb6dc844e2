#!/bin/sh
# Entry point of every tinysub container: refuse placeholder secrets, then run the command.
#
# docker-compose.yml already refuses to start without the secrets (${VAR:?...}); this refuses
# the values docker/dev.env ships, well-known defaults and short secrets, unless the deployment
# is the dev profile (TINYSUB_DEPLOY_PROFILE=dev, which only docker/dev.env sets).
set -eu

# Also the entry point of minio-init (the mc image), which alone sees the S3 users' secrets.
SECRETS="POSTGRES_PASSWORD AWS_SECRET_ACCESS_KEY MINIO_ROOT_PASSWORD RAY_AUTH_TOKEN TINYSUB_TOKEN
TINYSUB_S3_API_SECRET TINYSUB_S3_DASK_WORKER_SECRET TINYSUB_S3_RAY_WORKER_SECRET"
MIN_LENGTH=16

refuse() {
    echo "tinysub: refusing to start: $1" >&2
    echo "tinysub: set real secrets (e.g. openssl rand -hex 24), or use the dev profile:" >&2
    echo "tinysub:   docker compose --env-file docker/dev.env --profile dev up" >&2
    exit 64
}

if [ "${TINYSUB_DEPLOY_PROFILE:-production}" != "dev" ]; then
    for name in $SECRETS; do
        eval "value=\${$name:-}"
        [ -n "$value" ] || continue  # this container does not use that secret
        case "$value" in
            dev-only-*|*changeme*|*change-me*|password|secret|minioadmin|postgres|tinysub|testing)
                refuse "$name holds a placeholder value" ;;
        esac
        [ "${#value}" -ge "$MIN_LENGTH" ] || refuse "$name is shorter than $MIN_LENGTH characters"
    done
fi

exec "$@"

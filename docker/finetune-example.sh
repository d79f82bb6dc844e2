#!/bin/sh
# The example fine-tuning worker: pull the basis of task $TINYSUB_TASK_ID from the registry
# ($TINYSUB_URL) into the verified cache, then load it onto the training device (CUDA when a
# GPU is visible; TINYSUB_DEVICE=cpu forces the CPU) and check it. A real worker (issue 4)
# trains inside this basis where tinysub-finetune-check stops.
set -eu

: "${TINYSUB_TASK_ID:?set TINYSUB_TASK_ID: the task whose basis this worker pulls}"
token_file=${TINYSUB_DEV_TOKEN_FILE:-/run/tinysub/admin-token}
if [ -z "${TINYSUB_TOKEN:-}" ] && [ "${TINYSUB_DEPLOY_PROFILE:-production}" = dev ] \
    && [ -s "$token_file" ]; then
    TINYSUB_TOKEN=$(cat "$token_file")  # written by the dev profile's dev-seed job
    export TINYSUB_TOKEN
fi
: "${TINYSUB_TOKEN:?set TINYSUB_TOKEN: a read token (tinysub token create --scope read)}"

tinysub basis pull "$TINYSUB_TASK_ID" --kind "${TINYSUB_BASIS_KIND:-task}" --quiet
exec tinysub-finetune-check

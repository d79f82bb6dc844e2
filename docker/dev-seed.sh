#!/bin/sh
# The dev profile's one-shot job: an admin token for the dev tools (written to a volume the
# example fine-tuning worker reads), and a demo task whose trajectory comes from `tinysub demo`
# (its first stage: a tiny BERT fine-tuned on a synthetic task), uploaded over HTTP, with a task
# basis ordered.
# Re-running it changes nothing that is already there.
set -eu

[ "${TINYSUB_DEPLOY_PROFILE:-production}" = dev ] || {
    echo "tinysub-dev-seed: only for the dev profile (TINYSUB_DEPLOY_PROFILE=dev)" >&2
    exit 64
}
token_file=${TINYSUB_DEV_TOKEN_FILE:-/run/tinysub/admin-token}
task=${TINYSUB_DEV_TASK:-demo}
epochs=${TINYSUB_DEV_EPOCHS:-8}

if [ ! -s "$token_file" ]; then
    # Straight on the database (TINYSUB_DATABASE_URL): the first token needs no server.
    tinysub token create --name dev-admin --scope admin --json \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["token"])' >"$token_file.tmp"
    mv "$token_file.tmp" "$token_file"
fi
TINYSUB_TOKEN=$(cat "$token_file")
export TINYSUB_TOKEN

if ! tinysub task show "$task" >/dev/null 2>&1; then
    workdir=$(mktemp -d)
    tinysub demo --workdir "$workdir" --epochs "$epochs" --rank 4 --no-finetune
    tinysub task create "$task" --model tinysub-demo/tiny-bert --store "$workdir/trajectory"
    tinysub task upload "$task" "$workdir/trajectory" --quiet
    rm -rf "$workdir"
fi

ready=$(tinysub basis list "$task" --kind task --json \
    | python3 -c 'import json, sys; print(sum(b["status"] == "ready" for b in json.load(sys.stdin)))')
if [ "$ready" = 0 ]; then
    tinysub basis order "$task" --kind task --rank 4 --wait
fi
echo "tinysub-dev-seed: task $task has a ready task basis; admin token in $token_file"

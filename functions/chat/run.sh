#!/bin/bash
# Started by the AWS Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap), which then relays
# function URL requests to this server on $PORT and streams responses back (response_stream mode).
PATH=$PATH:$LAMBDA_TASK_ROOT/bin \
    PYTHONPATH=$LAMBDA_TASK_ROOT:$PYTHONPATH:/opt/python \
    exec python -m uvicorn --host 127.0.0.1 --port="${PORT:-8000}" --no-access-log --timeout-keep-alive 60 chat.app:app

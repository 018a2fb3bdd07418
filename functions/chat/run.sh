#!/bin/bash
# Started by the AWS Lambda Web Adapter (AWS_LAMBDA_EXEC_WRAPPER=/opt/bootstrap), which then relays
# function URL requests to this server on $PORT and streams responses back (response_stream mode).
# `python -m chat` is `uvicorn --host 127.0.0.1 --port $PORT --no-access-log --timeout-keep-alive 60
# chat.app:app` without loading uvicorn's command line (chat/__main__.py).
PATH=$PATH:$LAMBDA_TASK_ROOT/bin \
    PYTHONPATH=$LAMBDA_TASK_ROOT:$PYTHONPATH:/opt/python \
    exec python -m chat

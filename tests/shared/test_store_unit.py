import json
from datetime import UTC, datetime

import pytest
from indexer.events import normalize_sequencer, sequencer_after, sequencer_newer
from opensearchpy.exceptions import SerializationError
from rag_shared.store import FastJSONSerializer


def test_sequencers_compare_after_right_padding():
    assert sequencer_newer("0055AED6DCD90281E6", "0055AED6DCD90281E5")
    assert sequencer_newer("0055AED6DCD90281E500", "0055AED6DCD90281E4FF")
    assert not sequencer_newer("0055AED6DCD90281E5", "0055AED6DCD90281E500")  # same event, padded
    assert sequencer_newer("0A", None)
    assert normalize_sequencer("0a") == normalize_sequencer("0A00")


def test_backfill_sequencer_sits_between_real_events():
    seq = "0055AED6DCD90281E5"
    after = sequencer_after(seq)
    again = sequencer_after(after)
    assert sequencer_newer(after, seq) and sequencer_newer(again, after)
    assert sequencer_newer("0055AED6DCD90281E6", again)  # the next real event still wins


def test_fast_serializer_writes_what_the_standard_one_reads():
    ser = FastJSONSerializer()
    doc = {"vector": [0.1, -2.5e-7, 1.0], "when": datetime(2026, 1, 2, tzinfo=UTC), 3: "int key", "t": "é 中"}
    assert json.loads(ser.dumps(doc)) == {
        "vector": [0.1, -2.5e-7, 1.0],
        "when": "2026-01-02T00:00:00+00:00",
        "3": "int key",
        "t": "é 中",
    }
    assert ser.dumps("already a body") == "already a body"
    assert ser.loads(b'{"a": [1.5]}') == {"a": [1.5]}


def test_fast_serializer_raises_the_clients_error_class():
    with pytest.raises(SerializationError):
        FastJSONSerializer().dumps({"x": object()})
    with pytest.raises(SerializationError):
        FastJSONSerializer().loads("{not json")

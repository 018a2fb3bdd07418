from rag_shared.store import normalize_sequencer, sequencer_after, sequencer_newer


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

"""`local.sqs_pump.queue_empty`: a message whose visibility timeout ends while the queue is read is
never taken for an empty queue (the fault matrix once lost a failed record's retry that way under CI
load: the drain returned before the message came back)."""

from __future__ import annotations

from typing import Any

from local.sqs_pump import queue_empty

# the order moto (sqs/models.py, its list of queue attributes) takes the counts of one call in
MOTO_ORDER = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesDelayed",
    "ApproximateNumberOfMessagesNotVisible",
)


class TurningVisible:
    """One message in flight whose visibility timeout ends right after the first count is taken,
    the worst moment: in one call, after the visible count and before the in-flight one."""

    def __init__(self) -> None:
        self.in_flight = True
        self.flipped_during_a_read = False

    def _count(self, name: str) -> str:
        if name == "ApproximateNumberOfMessages":
            return "0" if self.in_flight else "1"
        if name == "ApproximateNumberOfMessagesNotVisible":
            return "1" if self.in_flight else "0"
        return "0"

    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        answer = {}
        for name in (n for n in MOTO_ORDER if n in AttributeNames):
            answer[name] = self._count(name)
            if self.in_flight:
                self.in_flight, self.flipped_during_a_read = False, True
        return {"Attributes": answer}


def one_call_check(sqs: Any) -> bool:
    """The former check: both counts from one call."""
    a = sqs.get_queue_attributes(
        QueueUrl="url", AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return bool(a["ApproximateNumberOfMessages"] == "0" and a["ApproximateNumberOfMessagesNotVisible"] == "0")


def test_the_former_one_call_check_misses_a_message_turning_visible() -> None:
    q = TurningVisible()
    assert one_call_check(q)  # the race this guards against: a pending message read as an empty queue
    assert q.flipped_during_a_read


def test_a_message_turning_visible_during_the_check_is_still_counted() -> None:
    q = TurningVisible()
    assert not queue_empty(q, "url")
    assert q.flipped_during_a_read  # the message did turn visible in the middle of the check


class Empty:
    def get_queue_attributes(self, QueueUrl: str, AttributeNames: list[str]) -> dict[str, Any]:
        return {"Attributes": dict.fromkeys(AttributeNames, "0")}


def test_an_empty_queue_is_empty() -> None:
    assert queue_empty(Empty(), "url")

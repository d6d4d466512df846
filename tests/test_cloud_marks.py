"""Stored marks without a broker: what the store computes, and when the publisher sends them."""

from __future__ import annotations

import json

import pytest

from cloud.marks import MarkPublisher
from cloud.store import NewResult, Store
from contract.topics import Topics
from contract.validation import parse_stored_mark
from tests import factories
from tests.cloud_helpers import database_url  # noqa: F401 (fixture)


def stored(store: Store, results) -> int:
    items = [NewResult(result, [None] * len(result.faces), result.to_json().decode()) for result in results]
    with store.transaction():
        return store.add_results(items, 0.0)


def test_the_mark_is_the_end_of_the_contiguous_run_from_zero(database_url):  # noqa: F811
    store = Store(database_url)
    epoch = "e1"
    stored(store, [factories.result(seq=seq, epoch=epoch) for seq in (1, 2, 4)])
    assert store.advance_marks([("cam-a", epoch)]) == {}  # seq 0 is missing: nothing may be forgotten yet
    stored(store, [factories.result(seq=0, epoch=epoch)])
    assert store.advance_marks([("cam-a", epoch)]) == {("cam-a", epoch): 2}
    stored(store, [factories.result(seq=3, epoch=epoch)])
    assert store.advance_marks([("cam-a", epoch)]) == {("cam-a", epoch): 4}
    assert store.advance_marks([("cam-a", "another")]) == {}
    store.close()


def test_the_same_identity_is_stored_once_even_with_a_new_msg_id(database_url):  # noqa: F811
    store = Store(database_url)
    first = factories.result(seq=0, epoch="e1")
    again_new_id = factories.result(seq=0, epoch="e1")
    assert first.msg_id != again_new_id.msg_id
    assert stored(store, [first, again_new_id]) == 1  # within one batch
    assert stored(store, [factories.result(seq=0, epoch="e1")]) == 0  # and across batches
    assert stored(store, [factories.result(seq=0, epoch="e2")]) == 1  # another epoch is another result
    store.close()


def test_the_mark_walks_past_a_chunk_boundary(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'cloud.db'}")
    stored(store, [factories.result(seq=seq, epoch="e1", faces=[]) for seq in range(0, 4500)])
    assert store.advance_marks([("cam-a", "e1")]) == {("cam-a", "e1"): 4499}
    store.close()


class Sent:
    def __init__(self) -> None:
        self.messages: list[tuple[str, dict]] = []

    def __call__(self, topic: str, payload: bytes) -> None:
        parse_stored_mark(payload)  # what goes out always passes the contract
        self.messages.append((topic, json.loads(payload)))

    def seqs(self) -> list[int]:
        return [document["seq"] for _topic, document in self.messages]


@pytest.fixture
def sent() -> Sent:
    return Sent()


def test_a_moving_mark_is_throttled_and_the_last_one_always_goes_out(sent):
    publisher = MarkPublisher(Topics(), sent, min_interval_s=0.2, repeat_s=5.0)
    publisher.update({("cam-a", "e1"): 10}, now=100.0)
    publisher.update({("cam-a", "e1"): 20}, now=100.1)  # too soon: held back
    assert sent.seqs() == [10]
    assert publisher.publish_due(100.25) == 1  # the writer's tick sends what was held back
    assert sent.seqs() == [10, 20]
    assert sent.messages[0][0] == "emotion/devices/cam-a/stored"


def test_an_unchanged_mark_repeats_only_while_the_device_sends(sent):
    publisher = MarkPublisher(Topics(), sent, min_interval_s=0.2, repeat_s=5.0)
    publisher.update({("cam-a", "e1"): 7}, now=0.0)
    publisher.update({("cam-a", "e1"): 7}, now=3.0)
    assert publisher.publish_due(4.0) == 0
    assert publisher.publish_due(5.5) == 1  # touched since it went out, 5 s ago: the edge learns we are alive
    assert publisher.publish_due(20.0) == 0  # nothing new from the device: silence
    assert sent.seqs() == [7, 7]


def test_marks_of_two_epochs_of_one_device_both_go_out(sent):
    publisher = MarkPublisher(Topics(), sent)
    publisher.update({("cam-a", "old"): 99, ("cam-a", "new"): 3}, now=0.0)
    assert sorted((document["epoch"], document["seq"]) for _topic, document in sent.messages) == [("new", 3), ("old", 99)]


def test_a_mark_never_goes_back(sent):
    publisher = MarkPublisher(Topics(), sent, min_interval_s=0.0)
    publisher.update({("cam-a", "e1"): 50}, now=0.0)
    publisher.update({("cam-a", "e1"): 40}, now=1.0)  # another worker's older reading
    assert sent.seqs() == [50]

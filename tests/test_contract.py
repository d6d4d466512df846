"""The wire contract: topics, result/stats/command schemas, and rejection reasons."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract.emotions import EMOTIONS
from contract.messages import MAX_RESULT_BYTES, Probabilities, Stats, StoredMark, parse_utc_millis
from contract.schema import SCHEMA_DIR, render_schemas
from contract.topics import Channel, InvalidDeviceId, Topics, check_device_id
from contract.validation import (
    ContractError,
    FrameMeta,
    parse_command,
    parse_frame,
    parse_result,
    parse_stats,
    parse_status,
    parse_stored_mark,
)
from tests import factories


def encode(document: dict) -> bytes:
    return json.dumps(document).encode()


def rejection(payload: bytes, **kwargs) -> str:
    with pytest.raises(ContractError) as caught:
        parse_result(payload, **kwargs)
    return caught.value.reason


# -- good messages -----------------------------------------------------------
def test_valid_result_round_trips():
    original = factories.result(faces=[factories.face(1), factories.face(2, box=(200, 100, 80, 80))])
    parsed = parse_result(original.to_json(), expected_device="cam-a")
    assert parsed == original
    assert list(json.loads(original.to_json())["faces"][0]["probabilities"]) == list(EMOTIONS)


def test_heartbeat_without_faces_is_valid():
    heartbeat = factories.result(faces=[])
    parsed = parse_result(heartbeat.to_json())
    assert parsed.emotion_text is None and parsed.emotion_probability is None


def test_legacy_fields_describe_the_largest_face():
    small = factories.face(1, box=(0, 0, 30, 30), top=0)
    large = factories.face(2, box=(100, 100, 120, 120), top=3)
    document = json.loads(factories.result(faces=[small, large]).to_json())
    assert document["emotion_text"] == "happy"
    assert document["emotion_probability"] == large.confidence
    assert document["timestamp"] == document["captured_at"]
    assert {"video_file", "frame_number", "emotion_probability", "emotion_text", "timestamp"} <= set(document)


def test_committed_json_schemas_match_the_models():
    for name, text in render_schemas().items():
        assert (SCHEMA_DIR / name).read_text() == text, f"{name} is stale: run python -m contract.schema"


def test_json_schema_accepts_a_real_result():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads((SCHEMA_DIR / "result.schema.json").read_text())
    jsonschema.validate(factories.result_dict(), schema)


# -- bad messages: each is rejected with a reason -------------------------------
def test_not_json():
    assert "Invalid JSON" in rejection(b"\x89PNG not json")


def test_missing_field():
    document = factories.result_dict()
    del document["seq"]
    assert "seq: Field required" in rejection(encode(document))


def test_wrong_types():
    document = factories.result_dict()
    document["seq"] = "12"
    assert "seq" in rejection(encode(document))
    document = factories.result_dict()
    document["faces"][0]["track_id"] = True
    assert "track_id" in rejection(encode(document))


def test_eight_probabilities():
    document = factories.result_dict()
    document["faces"][0]["probabilities"]["contempt"] = 0.0
    assert "contempt" in rejection(encode(document))


def test_seven_probabilities_as_list_are_not_accepted():
    document = factories.result_dict()
    document["faces"][0]["probabilities"] = [1 / 7] * 7
    assert "probabilities" in rejection(encode(document))


@pytest.mark.parametrize("token", [b"NaN", b"Infinity", b"-Infinity"])
def test_nan_and_infinity(token):
    document = factories.result_dict()
    text = encode(document).replace(b'"angry": ' + json.dumps(document["faces"][0]["probabilities"]["angry"]).encode(), b'"angry": ' + token, 1)
    assert token in text
    assert "angry" in rejection(text)


def test_probabilities_not_summing_to_one():
    document = factories.result_dict()
    probabilities = document["faces"][0]["probabilities"]
    for name in probabilities:
        probabilities[name] = 0.5
    assert "sum to" in rejection(encode(document))


def test_label_must_be_the_most_probable_class():
    document = factories.result_dict()
    document["faces"][0]["label"] = "sad"
    assert "most probable" in rejection(encode(document))


def test_unknown_label():
    document = factories.result_dict()
    document["emotion_text"] = "bored"
    assert "emotion_text" in rejection(encode(document))


def test_huge_strings():
    document = factories.result_dict()
    document["source"] = "x" * 10_000
    assert "source" in rejection(encode(document))
    document = factories.result_dict()
    document["faces"] = [document["faces"][0]] * 100
    assert "faces" in rejection(encode(document))


def test_oversized_payload_is_rejected_before_parsing():
    assert "too large" in rejection(b"{" + b" " * MAX_RESULT_BYTES + b"}")


@pytest.mark.parametrize("device_id", ["../etc", "cam/a", "cam+", "cam#", "", "a" * 65, ".hidden", "cam a", "cam\x00", "ça"])
def test_path_like_or_wildcard_device_ids(device_id):
    document = factories.result_dict()
    document["device_id"] = device_id
    assert "device_id" in rejection(encode(document))
    with pytest.raises(InvalidDeviceId):
        check_device_id(device_id)


def test_device_id_must_match_topic():
    assert "does not match" in rejection(factories.result(device_id="cam-a").to_json(), expected_device="cam-b")


def test_box_outside_the_frame():
    document = factories.result_dict()
    document["faces"][0]["box"]["x"] = 630
    assert "outside" in rejection(encode(document))


def test_bad_timestamp():
    document = factories.result_dict()
    document["captured_at"] = "2026-11-22 03:47:13"
    assert "captured_at" in rejection(encode(document))
    document = factories.result_dict()
    document["timestamp"] = "2026-11-22T03:47:13Z"  # checked on its own when it differs from captured_at
    assert "timestamp" in rejection(encode(document))


def test_probabilities_tuple_follows_the_emotion_order():
    values = [0.01, 0.02, 0.03, 0.84, 0.04, 0.05, 0.01]
    probabilities = Probabilities.from_sequence(values)
    assert probabilities.as_tuple() == tuple(values)
    assert [getattr(probabilities, name) for name in EMOTIONS] == values


def test_validated_crop_is_available_decoded():
    sent = factories.result()
    parsed = parse_result(sent.to_json())
    assert parsed.faces[0].crop_png == base64.b64decode(sent.faces[0].crop_png_b64)
    assert parsed.faces[0].crop_png.startswith(b"\x89PNG")
    assert parsed.captured_epoch == pytest.approx(parse_utc_millis(parsed.captured_at).timestamp())


def test_bad_crop():
    document = factories.result_dict()
    document["faces"][0]["crop_png_b64"] = "!!!not base64!!!"
    assert "base64" in rejection(encode(document))
    document["faces"][0]["crop_png_b64"] = base64.b64encode(b"\xff\xd8\xff a jpeg").decode()
    assert "PNG" in rejection(encode(document))


def test_extra_field_is_rejected():
    document = factories.result_dict()
    document["injected"] = 1
    assert "injected" in rejection(encode(document))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2048), st.text(max_size=512).map(str.encode), st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
).map(lambda value: json.dumps(value).encode())))
def test_arbitrary_payloads_only_ever_raise_contract_error(payload):
    try:
        parse_result(payload)
    except ContractError as error:
        assert error.reason


# -- other messages ------------------------------------------------------------------
def test_status_words():
    assert parse_status(b"online") == "online"
    with pytest.raises(ContractError):
        parse_status(b"ONLINE!")


def test_frame_payload():
    jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 100 + b"\xff\xd9"
    assert parse_frame(base64.b64encode(jpeg)) == jpeg
    with pytest.raises(ContractError, match="base64"):
        parse_frame(b"***")
    with pytest.raises(ContractError, match="JPEG"):
        parse_frame(base64.b64encode(b"GIF89a"))


def test_frame_meta_round_trips_through_user_properties():
    meta = FrameMeta(frame_number=7, captured_at="2026-11-22T03:47:13.123Z", result_seq=3, result_msg_id="abc")
    assert FrameMeta.from_properties(meta.to_properties()) == meta
    with pytest.raises(ContractError):
        FrameMeta.from_properties([("frame_number", "x")])


GOOD_FRAME_PROPERTIES = {"frame_number": "7", "captured_at": "2026-11-22T03:47:13.123Z", "result_seq": "3",
                         "result_msg_id": "0b5bd8a4-6f7e-4c39-9d1a-2f1e8c7b6a50"}


@pytest.mark.parametrize("name, value", [
    ("captured_at", "2026-13-45T00:00:00.000Z"), ("captured_at", "yesterday"), ("captured_at", ""),
    ("captured_at", "2026-11-22T03:47:13.123Z-and-more"), ("captured_at", "２０２６-11-22T03:47:13.123Z"),
    ("frame_number", "-1"), ("frame_number", "1e3"), ("frame_number", "9" * 30), ("frame_number", " 7"),
    ("result_seq", "x"), ("result_seq", str(2**63)), ("result_msg_id", "a\x00b"), ("result_msg_id", "x" * 65),
])
def test_frame_meta_refuses_each_bad_property_with_its_name(name, value):
    properties = {**GOOD_FRAME_PROPERTIES, name: value}
    with pytest.raises(ContractError, match=name):
        FrameMeta.from_properties(list(properties.items()))


_PROPERTY_TEXT = st.one_of(st.text(max_size=40), st.sampled_from(list(GOOD_FRAME_PROPERTIES.values())),
                           st.integers().map(str), st.from_regex(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z", fullmatch=True))
_PROPERTY_NAME = st.one_of(st.sampled_from(list(GOOD_FRAME_PROPERTIES)), st.text(max_size=12))
_ODD_VALUE = st.one_of(st.none(), st.integers(), st.binary(max_size=8), st.tuples(st.text(max_size=3)))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.lists(st.tuples(_PROPERTY_NAME, _PROPERTY_TEXT), max_size=6),
    st.lists(st.one_of(st.tuples(_PROPERTY_NAME, _ODD_VALUE), st.tuples(_PROPERTY_NAME), _ODD_VALUE, st.text(max_size=3)), max_size=4),
    _ODD_VALUE,
))
def test_frame_properties_only_ever_raise_contract_error(pairs):
    """Whatever a device puts in its frame's user properties, the answer is a FrameMeta or a ContractError."""
    try:
        meta = FrameMeta.from_properties(pairs)
    except ContractError as error:
        assert error.reason
        return
    assert 0 <= meta.frame_number < 2**63 and parse_utc_millis(meta.captured_at)
    assert meta.result_seq is None or 0 <= meta.result_seq < 2**63


def test_commands():
    assert parse_command(b'{"schema":"emotion.command/1","id":"1","command":"set_fps","args":{"fps":5}}').args == {"fps": 5}
    with pytest.raises(ContractError, match="fps"):
        parse_command(b'{"schema":"emotion.command/1","id":"1","command":"set_fps","args":{"fps":0}}')
    with pytest.raises(ContractError, match="command"):
        parse_command(b'{"schema":"emotion.command/1","id":"1","command":"rm -rf"}')


def test_stats_device_must_match():
    stats = Stats(
        device_id="cam-a", sent_at="2026-11-22T03:47:13.123Z", uptime_s=1, fps=10, frames_processed=1,
        frames_dropped=0, results_published=1, outbox_depth=0, outbox_dropped=0,
        stage_ms={"detect": 1.0}, model={"name": "m", "version": "1"}, source="file:x", paused=False,
    )
    assert parse_stats(stats.to_json(), expected_device="cam-a") == stats
    with pytest.raises(ContractError, match="does not match"):
        parse_stats(stats.to_json(), expected_device="cam-b")


# -- topics ------------------------------------------------------------------------
def test_topic_layout_and_parsing():
    topics = Topics("site1/emotion")
    assert topics.result("cam-a") == "site1/emotion/devices/cam-a/result"
    assert topics.command_reply("cam-a") == "site1/emotion/devices/cam-a/cmd/reply"
    parsed = topics.parse("site1/emotion/devices/cam-a/cmd/reply")
    assert parsed.device_id == "cam-a" and parsed.channel is Channel.COMMAND_REPLY
    assert topics.parse("site1/emotion/models/release") is None
    assert topics.parse("site1/emotion/devices/cam-a/unknown") is None
    with pytest.raises(InvalidDeviceId):
        topics.parse("site1/emotion/devices/..%2f/result")
    with pytest.raises(ValueError):
        Topics("bad/#")


def test_schema_version_is_required_on_the_wire():
    document = factories.result_dict()
    del document["schema"]
    assert "schema" in rejection(encode(document))
    document["schema"] = "emotion.result/1"  # the version before epochs: its identity can repeat, so refused
    assert "schema" in rejection(encode(document))
    document["schema"] = "emotion.result/3"
    assert "schema" in rejection(encode(document))


def test_a_result_names_its_epoch():
    document = factories.result_dict()
    del document["epoch"]
    assert "epoch" in rejection(encode(document))
    document["epoch"] = "a/b"
    assert "epoch" in rejection(encode(document))


def test_stored_mark_round_trip_and_device_check():
    mark = StoredMark(device_id="cam-a", epoch="0123456789abcdef", seq=41, stored_at="2026-12-02T18:00:00.000Z")
    assert parse_stored_mark(mark.to_json(), expected_device="cam-a") == mark
    with pytest.raises(ContractError, match="does not match"):
        parse_stored_mark(mark.to_json(), expected_device="cam-b")
    with pytest.raises(ContractError, match="seq"):
        parse_stored_mark(mark.to_json().replace(b'"seq":41', b'"seq":-1'))

"""The client's request builders (protocol.py) produce what the server's parser accepts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from wsnursery import codec, protocol
from wsnursery.codec import Encoding
from wsnursery.protocol import (
    Ack,
    Position,
    Publish,
    Replay,
    RequestParser,
    Subscribe,
    Unsubscribe,
)

PARSER = RequestParser()
channels = st.from_regex(protocol.DEFAULT_CHANNEL_PATTERN, fullmatch=True).filter(lambda c: "\n" not in c)
ids = st.integers(0, 2**63 - 1)
seqs = st.integers(0, 2**63 - 1)
positions = st.builds(Position, st.text(min_size=1, max_size=protocol.MAX_EPOCH_LENGTH), seqs)


def through_the_wire(frame: dict, encoding: Encoding) -> dict:
    return codec.decode(codec.encode(frame, encoding), encoding)


@given(ids, channels, st.none() | positions, st.booleans(), st.sampled_from(list(Encoding)))
def test_subscribe(request_id, channel, since, ack, encoding):
    frame = protocol.subscribe_request(request_id, channel, since=since, ack=ack)
    assert PARSER.parse(through_the_wire(frame, encoding)) == Subscribe(request_id, channel, since, ack)


@given(ids, channels)
def test_unsubscribe(request_id, channel):
    frame = protocol.unsubscribe_request(request_id, channel)
    assert PARSER.parse(frame) == Unsubscribe(request_id, channel)


@given(
    ids,
    channels,
    st.text(min_size=1, max_size=protocol.MAX_KEY_LENGTH) | st.none(),
    st.integers() | st.text() | st.none(),
)
def test_publish(request_id, channel, key, data):
    frame = protocol.publish_request(request_id, channel, data, key)
    assert PARSER.parse(frame) == Publish(request_id, channel, data, key)


@given(channels, seqs)
def test_ack(channel, seq):
    assert PARSER.parse(protocol.ack_request(channel, seq)) == Ack(None, channel, seq)


@given(ids, channels, positions)
def test_replay(request_id, channel, since):
    frame = protocol.replay_request(request_id, channel, since)
    assert PARSER.parse(frame) == Replay(request_id, channel, since)


def test_refresh_has_the_contract_field_names():
    assert protocol.refresh_request(9, "t.o.k") == {"type": "refresh", "id": 9, "token": "t.o.k"}

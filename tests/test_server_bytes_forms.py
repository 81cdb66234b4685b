"""Bytes published by a JSON client in the documented form reach CBOR readers as bytes."""

from tests.wsclient import bytes_form, connect
from wsnursery.codec import Encoding


async def test_json_bytes_form_becomes_bytes_for_cbor_and_stays_the_form_for_json(server):
    async with (
        connect(server.url, Encoding.CBOR) as cbor_reader,
        connect(server.url) as json_reader,
        connect(server.url) as json_writer,
    ):
        await cbor_reader.subscribe("bytes.forms")
        await json_reader.subscribe("bytes.forms")
        await json_writer.publish("bytes.forms", {"blob": bytes_form(b"\xfe\x00"), "text": "x"})
        (cbor_message,) = await cbor_reader.messages(1)
        (json_message,) = await json_reader.messages(1)
    assert cbor_message["data"] == {"blob": b"\xfe\x00", "text": "x"}
    assert json_message["data"] == {"blob": bytes_form(b"\xfe\x00"), "text": "x"}

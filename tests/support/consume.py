"""Reads every message of a JetStream stream with nats-py, an independent client,
and prints one JSON line per message: seq, subject, Nats-Msg-Id, payload."""

import asyncio
import json
import sys

import nats


async def main(url: str, stream: str) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    info = await js.stream_info(stream)
    # An empty stream says first_seq 0 (no message has that number).
    first = max(info.state.first_seq, 1)
    for seq in range(first, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        headers = msg.headers or {}
        print(json.dumps({
            "seq": seq,
            "subject": msg.subject,
            "id": headers.get("Nats-Msg-Id"),
            "data": json.loads(msg.data),
        }))
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))

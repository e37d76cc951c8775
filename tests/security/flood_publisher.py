"""The attacker of finding 4 in a process of its own: a QoS 0 + 1 MiB junk flood from one device account.

Run by ``test_finding4_resources.py`` (a flood published from the test process would share
its interpreter lock with the collector under test, and slow both). It prints ``flooding``
once connected, publishes as fast as the broker takes it, waits for every QoS 1 PUBACK and
prints ``done``. Credentials come from ``LW_FLOOD_USER`` / ``LW_FLOOD_PASSWORD``.

    python -m tests.security.flood_publisher PORT TOPIC QOS0_COUNT JUNK_COUNT
"""

from __future__ import annotations

import os
import sys

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

JUNK_BYTES = 1 << 20


def flood(port: int, topic: str, qos0: int, junk: int) -> None:
    """``qos0`` messages of 200 B at QoS 0 and ``junk`` of 1 MiB at QoS 1, interleaved."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="flood-attacker", protocol=mqtt.MQTTv5)
    client.username_pw_set(os.environ["LW_FLOOD_USER"], os.environ["LW_FLOOD_PASSWORD"])
    client.max_inflight_messages_set(100)
    client.connect("127.0.0.1", port)
    client.loop_start()
    blob = os.urandom(JUNK_BYTES)
    total = max(qos0, junk)
    junk_at = {k * total // junk for k in range(junk)} if junk else set()
    print("flooding", flush=True)
    infos = []
    try:
        for i in range(total):
            if i < qos0:
                client.publish(topic, b"\x00" * 200, qos=0)
            if i in junk_at:
                infos.append(client.publish(topic, blob, qos=1))
        for info in infos:
            info.wait_for_publish(120)
    finally:
        client.disconnect()
        client.loop_stop()
    print("done", sum(1 for info in infos if info.is_published()), flush=True)


if __name__ == "__main__":
    flood(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

"""The uplink's persistent session across a restart of the real `edge-gateway` process (issue 14: 7, 8):
commands sent while the gateway is stopped are queued by the broker for our session and handled
after the restart — executed if their ttl allows, refused `expired` otherwise, refused `retained`
when they were retained (retain-as-published), and a replayed seq is answered, not run again.
A cmd_topic removed from the configuration is unsubscribed from the resumed session."""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

from paho.mqtt.client import CallbackAPIVersion, Client, MQTTMessage, MQTTv5

from edge_gateway.testkit import LOOPBACK

from ..runtime.plant import Plant

CMD = "/edge/demo/edge-01/cmd/"


class Cloud:
    """The cloud side: publishes commands and keeps every ack (a replay's ack too), in arrival order."""

    def __init__(self, port: int) -> None:
        self.acks: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = Client(CallbackAPIVersion.VERSION2, client_id="cloud-test", protocol=MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(LOOPBACK, port)
        self.client.subscribe("/edge/demo/edge-01/ack/+", qos=1)
        self.client.loop_start()
        assert self._subscribed.wait(10)

    def _on_message(self, _c: Client, _u: object, msg: MQTTMessage) -> None:
        with self._lock:
            self.acks.append(json.loads(msg.payload))

    def send(self, tag: str, body: dict[str, Any], retain: bool = False, topic: str = CMD) -> None:
        self.client.publish(topic + tag, json.dumps(body).encode(), qos=1, retain=retain).wait_for_publish(5)

    def acks_of(self, seq: int) -> list[dict[str, Any]]:
        with self._lock:
            return [a for a in self.acks if a["seq"] == seq]

    def wait(self, cond: Any, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stop(plant: Plant) -> None:
    assert plant.gw is not None
    plant.gw.send_signal(signal.SIGTERM)
    assert plant.gw.wait(20) == 0, plant.log_tail()


def test_commands_sent_while_the_gateway_is_stopped_are_handled_after_its_restart(plant: Plant) -> None:
    cloud = Cloud(plant.broker.port)
    try:
        plant.start_gateway()
        plant.wait_ready()
        # READY comes before the SUBACK: a command sent earlier is lost (a new session queues nothing yet)
        assert cloud.wait(lambda: plant.ctl("connector.stats")["subscriptions"] == [CMD + "+"]), plant.log_tail()
        cloud.send("plant.setpoint_c", {"seq": 1, "value": 22.0})
        assert cloud.wait(lambda: cloud.acks_of(1)), plant.log_tail()
        assert cloud.acks_of(1)[0]["result"] == "ok"
        _stop(plant)

        now = int(time.time() * 1000)
        cloud.send("plant.setpoint_c", {"seq": 10, "value": 23.0, "ttl": "10m", "ts": now})
        cloud.send("plant.pump_on", {"seq": 11, "value": False, "ttl": "1s", "ts": now - 5000})
        cloud.send("plant.pump_on", {"seq": 12, "value": False}, retain=True)
        cloud.send("plant.setpoint_c", {"seq": 1, "value": 22.0})  # a replay of the first command
        assert plant.sim.ctl(op="get", unit=1, table="holding", addr=20)["value"] == 220

        plant.start_gateway()
        plant.wait_ready()
        assert cloud.wait(lambda: all(cloud.acks_of(s) for s in (10, 11, 12)) and len(cloud.acks_of(1)) == 2), (
            cloud.acks,
            plant.log_tail(),
        )
        assert cloud.acks_of(10)[0]["result"] == "ok"
        assert (cloud.acks_of(11)[0]["result"], cloud.acks_of(11)[0]["error"][:15]) == ("fail", "command expired")
        assert cloud.acks_of(12)[0]["result"] == "fail" and "retained" in cloud.acks_of(12)[0]["error"]
        assert [a["result"] for a in cloud.acks_of(1)] == ["ok", "ok"]  # answered with the first outcome …
        # … and not written again: the setpoint is seq 10's, and the pump was never switched off
        assert plant.sim.ctl(op="get", unit=1, table="holding", addr=20)["value"] == 230
        assert plant.sim.ctl(op="get", unit=1, table="coil", addr=0)["value"] is True
        stats = plant.ctl("connector.stats")
        assert stats["session"] == "resumed" and stats["subscriptions"] == [CMD + "+"]
        _stop(plant)

        # a new cmd_topic while stopped: the old filter is unsubscribed from the resumed session
        plant.edit(
            "connector.yml",
            ('cmd_topic: "/edge/{tenant}/{device}/cmd/{tag}"', 'cmd_topic: "/edge/{tenant}/{device}/c2/{tag}"'),
        )
        plant.start_gateway()
        plant.wait_ready()
        new = ["/edge/demo/edge-01/c2/+"]  # after UNSUBACK and SUBACK
        assert cloud.wait(lambda: plant.ctl("connector.stats")["subscriptions"] == new), plant.log_tail()
        cloud.send("plant.setpoint_c", {"seq": 20, "value": 24.0})  # the old topic: nobody listens any more
        cloud.send("plant.setpoint_c", {"seq": 21, "value": 25.0}, topic="/edge/demo/edge-01/c2/")
        assert cloud.wait(lambda: cloud.acks_of(21)), plant.log_tail()
        stats = plant.ctl("connector.stats")
        assert stats["subscriptions"] == new
        assert stats["stray"] == 0 and cloud.acks_of(20) == []  # seq 20 never reached the gateway
        assert plant.sim.ctl(op="get", unit=1, table="holding", addr=20)["value"] == 250
    finally:
        cloud.close()

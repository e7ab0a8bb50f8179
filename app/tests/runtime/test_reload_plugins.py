"""Hot reload of the OPC UA and S7 plugins' devices through the real gateway process (issue 16): a
change to one device restarts that device's endpoint worker only; the Modbus lines and the other
plugin's endpoints keep polling through it, with no frame lost (the seqs have no gap)."""

from __future__ import annotations

from edge_gateway.testkit import LOOPBACK
from tests.consumer import BatchSubscriber

from ..drivers_s7.conftest import S7Sim
from .plant import TAGS, Plant, latest, no_gaps, wait

SECOND_S7 = {
    "endpoints.yml": "\nplc_s7b:\n  scheme: s7\n  host: 127.0.0.1\n  port: {port}\n  opts: {{ rack: 0, slot: 1 }}\n",
    "drivers.yml": "\ns7b:\n  kind: static\n  endpoint_id: plc_s7b\n  proto: s7\n  cfg: {{ polling: 200ms }}\n",
    "variables.yml": "\n- {{ tag: s7b.counter, driver_id: s7b, datatype: int32,\n"
    "    address: {{ area: DB, db: 10, start: 6 }} }}\n",
}


def reload_restarts_only(
    plant: Plant, sub: BatchSubscriber, edit: tuple[str, str], changed: str, endpoint: str
) -> None:
    """Apply `edit` to drivers.yml (as a deployment tool does): device `changed` alone is restarted (with
    its endpoint's worker, `endpoint`)."""
    wait(lambda: all(d["polls"] > 2 for d in plant.drivers().values()), 30, "every device polling", plant)
    before = plant.drivers()
    n = len(sub.frames())
    plant.edit("drivers.yml", edit)
    wait(lambda: plant.metric("cfg_apply_total", {"result": "ok"}) == 1, 30, "the reload", plant)
    changes = plant.ctl("status")["last_reload"]["changes"]  # one change, naming the endpoint or the device
    assert len(changes) == 1 and (endpoint in changes[0] or changed in changes[0]), changes
    wait(lambda: plant.drivers()[changed]["polls"] > 2, 30, f"{changed} polling again", plant)
    after = plant.drivers()
    assert after[changed]["since_ms"] > before[changed]["since_ms"]  # its worker was restarted
    for d in set(before) - {changed}:  # every other device kept its worker and kept polling
        assert after[d]["since_ms"] == before[d]["since_ms"], d
        assert after[d]["polls"] > before[d]["polls"], d
    # The others' values kept arriving from before the edit to after the reload, never marked
    # disconnected, and nothing was lost.
    own = {"ua1": "ua.", "s7plc": "s7."}[changed]  # the changed device's tags
    others = {t for t in ("plant.flow_m3h", "meter1.current_a", "s7.counter", "ua.counter", "s7b.counter")
              if t in latest(sub) and not t.startswith(own)}  # fmt: skip
    assert sub.wait_for(lambda s: others <= {f["tag"] for f in s.frames()[n:]}, 20), others
    assert not [f for f in sub.frames() if f["q"] == "bad:disconnected" and f["tag"] in others]
    assert no_gaps(sub.seqs())


def test_an_opcua_device_change_restarts_only_that_device(plant: Plant) -> None:
    with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
        plant.start_gateway()
        plant.wait_ready()
        assert sub.wait_for(lambda s: len(latest(s)) == TAGS, 30), plant.log_tail()
        reload_restarts_only(plant, sub, ("publishing_interval: 500", "publishing_interval: 400"), "ua1", "plant_ua")
        assert sub.wait_for(lambda s: any(f["tag"] == "ua.temp_c" for f in s.frames()[-50:]), 20)  # subscribed again


def test_an_s7_device_change_restarts_only_its_endpoint_of_two(plant: Plant) -> None:
    second = S7Sim().start()
    try:
        for fname, text in SECOND_S7.items():
            plant.edit(fname, append=text.format(port=second.port))
        with BatchSubscriber(LOOPBACK, plant.broker.port) as sub:
            plant.start_gateway()
            plant.wait_ready()
            assert sub.wait_for(lambda s: len(latest(s)) == TAGS + 1, 30), plant.log_tail()
            reload_restarts_only(
                plant,
                sub,
                (
                    "endpoint_id: plc_s7\n  proto: s7\n  cfg:\n    polling: 200ms",
                    "endpoint_id: plc_s7\n  proto: s7\n  cfg:\n    polling: 300ms",
                ),
                "s7plc",
                "plc_s7",
            )
            assert "s7b.counter" in {f["tag"] for f in sub.frames()[-100:]}
    finally:
        second.stop()

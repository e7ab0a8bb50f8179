"""The command ledger across a real power cut: a write handed to a line must be known after it.

A SIGKILL keeps the page cache, so only a power cut (ext4 shutdown ioctl on a loop device, see
testkit.PowerCutDisk) shows whether the `pending` line reached the disk before the write ran. If it
did not, the broker's redelivery of the same command after the reboot would write the PLC twice.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_gateway.delivery.ledger import PENDING, Entry, SeqLedger
from edge_gateway.testkit import PowerCutDisk, power_cut_unsupported

pytestmark = pytest.mark.skipif(power_cut_unsupported() is not None, reason=str(power_cut_unsupported()))


def test_pending_write_survives_a_power_cut(tmp_path: Path) -> None:
    with PowerCutDisk(tmp_path / "disk", size_mib=32) as disk:
        path = disk.mnt / "commands.ledger"
        ledger = SeqLedger(path)
        ledger.put(7, Entry("plant.sp=1", "plant.sp", PENDING, "none"))
        disk.cut()  # the power goes while the write is on the wire: no outcome line, nothing written back
        ledger.close()
        disk.remount()
        after = SeqLedger(path)
        entry = after.get(7)
        after.close()
        assert entry is not None, "the pending write was lost: a redelivered command would run twice"
        assert (entry.result, entry.reason) == ("fail", "interrupted")

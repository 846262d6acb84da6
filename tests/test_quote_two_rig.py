"""Two gateway daemons on one simulator and a real broker: SUB-007 asks SUB-006, signed with its own
Ed25519 key, what it could carry through TIE-67 in a window three days ahead; SUB-006 answers from
its own forecast headroom (a quote, or a refusal saying why), and nothing is switched or reserved."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hil.rig import TwoRig, two_site_documents

pytestmark = pytest.mark.slow


def test_a_quote_for_a_future_window_crosses_the_broker_and_reserves_nothing(tmp_path: Path) -> None:
    with TwoRig(two_site_documents(), tmp_path, hil_args=("--no-ami",)) as rig:
        start = time.time() + 3 * 86_400.0
        asked = rig.daemon_call(
            "SUB-007", "transfer.quote", tie="TIE-67", window_start=start, window_end=start + 6 * 3600.0, kva=2_000.0
        )

        def answered() -> dict | None:  # type: ignore[type-arg]
            quotes = rig.daemon_call("SUB-007", "transfer.status")["quotes"]["answered"]
            return next((a for a in quotes if a["xid"] == asked["xid"]), None)

        answer = rig.wait(answered, "SUB-006's answer at SUB-007", 30.0, interval_s=0.2)
        assert answer["by"] == "SUB-006", answer
        assert answer["kva"] is not None or answer["note"].startswith("SUB-006 refused: "), answer
        six = rig.daemon_call("SUB-006", "transfer.status")
        assert six["quotes"]["quoted_for_neighbours"] + six["quotes"]["refused_to_neighbours"] == 1
        assert six["dropped"] == 0
        assert not six["exchanges"], "a quote opens no exchange: nothing reserved"
        hil = rig.hil_call("status")
        assert not hil["parallel"]

"""Who may read the files a campaign writes: its owner only by default, or the owner's group.

``CAMPAIGN_SHARING=owner`` (default) or ``group`` sets the process's umask when a command starts (and when a
campaign runs through the Python API), so the SQLite database (and its WAL files, which SQLite creates with the
database's mode), task directories, checkpoints, stores and reports are created ``rw-------`` / ``rwx------``,
or group-readable and -writable for a team sharing one Unix group. Workers a local site starts inherit it.
"""

from __future__ import annotations

import os

from campaign.errors import CampaignInputError

ENV_VAR = "CAMPAIGN_SHARING"
UMASKS = {"owner": 0o077, "group": 0o007}


def sharing_umask() -> int:
    """The umask ``$CAMPAIGN_SHARING`` asks for.

    Raises:
        CampaignInputError: an unknown value.
    """
    value = os.environ.get(ENV_VAR, "owner").strip().lower() or "owner"
    if value not in UMASKS:
        raise CampaignInputError(f"{ENV_VAR}={value!r}: use one of {', '.join(UMASKS)}")
    return UMASKS[value]


def apply_sharing() -> int:
    """Set the process umask from ``$CAMPAIGN_SHARING``; returns the previous umask."""
    return os.umask(sharing_umask())

"""Errors that mean "bad input": the CLI prints their message alone and exits with status 2."""

from __future__ import annotations


class CampaignInputError(ValueError):
    """Bad input discovered while preparing a run (unknown campaign, unusable workdir, missing credentials…)."""

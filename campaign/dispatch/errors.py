"""Errors of the dispatch layer that the CLI maps to exit statuses."""

from __future__ import annotations


class DispatchError(RuntimeError):
    """A dispatcher could not be built or used (bad site parameters, executor failed to start)."""


class CredentialsMissing(DispatchError):
    """Globus Compute has no credentials and cannot ask for them (non-interactive run). CLI exit status 2.

    The message says how to provide them: ``globus-compute-endpoint login``/``Client().login`` interactively
    once, or the ``GLOBUS_COMPUTE_CLIENT_ID`` and ``GLOBUS_COMPUTE_CLIENT_SECRET`` environment variables.
    """

    exit_code = 2

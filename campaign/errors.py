"""Errors that mean "bad input": the CLI prints their message alone and exits with status 2."""

from __future__ import annotations

from campaign.recipe import RecipeError


class CampaignInputError(ValueError):
    """Bad input discovered while preparing a run (unknown campaign, unusable workdir, missing credentials…)."""


def bad_input_types() -> tuple[type[BaseException], ...]:
    """Exception types the CLI reports as bad input (exit 2). Imports db lazily (it pulls sqlalchemy)."""
    from campaign.dispatch.errors import CredentialsMissing
    from campaign.ledger import CampaignConflict
    from db.engine import DatabaseError
    from db.queries import QueryParamError, UnknownQuery
    from db.readonly import QueryError, ReadOnlyViolation

    return (RecipeError, CampaignInputError, DatabaseError, QueryError, ReadOnlyViolation, UnknownQuery,
            QueryParamError, CampaignConflict, CredentialsMissing)

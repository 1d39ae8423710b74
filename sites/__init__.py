"""Sites: the facts about each machine (stdlib only) and one factory per machine returning a ``parsl.Config``.

Importing :mod:`sites` or :mod:`sites.facts` does not import Parsl (recipe validation must be instant); the
factories live in :mod:`sites.configs` and :mod:`sites.render`, imported when needed.
"""

from sites.facts import SiteFacts, get_site, list_sites, site_names

__all__ = ["SiteFacts", "get_site", "list_sites", "site_names"]

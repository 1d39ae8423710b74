"""Which address the workers of a site use to reach the interchange (Parsl's ``address=``)."""

from __future__ import annotations

from parsl.addresses import address_by_interface


class InterfaceNotFound(ValueError):
    """The network interface a site's workers should connect over does not exist on this host."""


def resolve_address(site: str, interface: str | None, address: str | None) -> str | None:
    """The interchange address for a site.

    Args:
        site: Site name, for the error message.
        interface: Network interface (``hsn0`` on the Slingshot machines); ``None`` lets Parsl probe all
            addresses of this host.
        address: An explicit address, which wins over ``interface``.

    Returns:
        The address, or ``None`` when neither is given (Parsl then tries every address of this host).

    Raises:
        InterfaceNotFound: when ``interface`` does not exist here (e.g. building a Frontier config on a
            laptop: give ``address=`` or run on the login node).
    """
    if address:
        return address
    if interface is None:
        return None
    try:
        return address_by_interface(interface)
    except OSError as exc:
        raise InterfaceNotFound(
            f"site {site!r}: network interface {interface!r} not found on this host ({exc.strerror or exc}); "
            "run on the site's login node or pass address=..."
        ) from None

"""The model's hyperparameters: one schema per message-passing family, a union told apart by ``family``.

The recipe validates an HPO campaign's searched and fixed names and values against the family's schema, and
:func:`models.nn.model.build_model` builds from the same schema, so a name or value the model would refuse fails
when the recipe is checked, not in a trial. ``heads`` are registry head ids (set from the datasets, never
searched). Lengths are in Å.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError, field_validator, model_validator

from models.appio import BadInput
from models.contracts import Strict, field_name, reason

#: The six message-passing families, in the order the seed work's HPO campaigns list them.
FAMILIES: tuple[str, ...] = ("painn", "schnet", "egnn", "dimenet++", "mace", "pna")

#: Force modes: ``conservative`` (``-dE/dpos``, energy-consistent, a double backward to train) or ``direct`` (a
#: vector node head named ``forces``: one backward, not conservative).
FORCE_MODES: tuple[str, ...] = ("conservative", "direct")

#: Names a node head cannot take (outputs of the model itself).
RESERVED_OUTPUTS: tuple[str, ...] = ("energy", "stress")

#: Fields the HPO may not search or fix: the heads come from the datasets.
NOT_SEARCHABLE: frozenset[str] = frozenset({"family", "heads"})

PositiveInt = Annotated[int, Field(ge=1, strict=True)]


class NodeHead(Strict):
    """A direct per-atom output head: ``scalar`` ([N]) or ``vector`` ([N, 3], equivariant)."""

    name: str
    kind: Literal["scalar", "vector"]

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.isidentifier():
            raise ValueError(f"must be an identifier, got {v!r}")
        if v in RESERVED_OUTPUTS:
            raise ValueError(f"{v!r} is reserved (an output of the model itself)")
        return v


class CommonHyperparameters(Strict):
    """What every family has.

    Attributes:
        hidden: Feature width F of the encoder.
        layers: Message-passing layers.
        cutoff: Radial cutoff, Å (edges longer than it are ignored).
        num_rbf: Radial basis size.
        heads: Registry head ids: one energy head per dataset.
        max_z: Largest atomic number embedded.
        head_hidden: Width of the heads' hidden layer (None: the encoder's ``hidden``).
        forces: ``conservative`` or ``direct`` (see :data:`FORCE_MODES`).
        node_heads: Direct per-atom heads; ``forces: direct`` adds the ``forces`` vector head.
    """

    hidden: PositiveInt = 128
    layers: PositiveInt = 4
    cutoff: float = Field(5.0, gt=0, strict=True)
    num_rbf: PositiveInt = 20
    heads: list[Annotated[int, Field(ge=0, strict=True)]] = Field(default_factory=lambda: [0], min_length=1)
    max_z: PositiveInt = 100
    head_hidden: PositiveInt | None = None
    forces: Literal["conservative", "direct"] = "conservative"
    node_heads: list[NodeHead] = Field(default_factory=list)

    @field_validator("heads")
    @classmethod
    def _distinct_heads(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"head ids must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _node_heads(self) -> CommonHyperparameters:
        names = [h.name for h in self.node_heads]
        if len(set(names)) != len(names):
            raise ValueError(f"node_heads: a name is repeated in {names}")
        for h in self.node_heads:
            if h.name == "forces" and (h.kind != "vector" or self.forces != "direct"):
                raise ValueError("node_heads: a 'forces' node head is a vector head of a 'forces: direct' model")
        if self.forces == "direct" and "forces" not in names:
            self.node_heads = [*self.node_heads, NodeHead(name="forces", kind="vector")]
        return self


class PaiNNHyperparameters(CommonHyperparameters):
    """PaiNN (Schütt et al. 2021): equivariant scalar + vector features."""

    family: Literal["painn"] = "painn"
    radial_basis: Literal["bessel", "gaussian"] = Field(
        "bessel", description="Radial functions of the filters: sin(n pi r / rc) / r (the paper's) or Gaussians "
        "spread over [0, cutoff] (schnetpack's choice).")


class SchNetHyperparameters(CommonHyperparameters):
    """SchNet: continuous-filter convolutions."""

    family: Literal["schnet"] = "schnet"
    num_filters: PositiveInt | None = Field(None, description="Filter width (None: ``hidden``).")


class EGNNHyperparameters(CommonHyperparameters):
    """E(n)-equivariant GNN."""

    family: Literal["egnn"] = "egnn"
    avg_num_neighbors: float = Field(32.0, gt=0, strict=True, description="Normalisation of the summed messages.")


class DimeNetPPHyperparameters(CommonHyperparameters):
    """DimeNet++: directional messages over angle triplets."""

    family: Literal["dimenet++"] = "dimenet++"
    num_radial: PositiveInt = 6
    num_spherical: PositiveInt = 7
    int_emb_size: PositiveInt = 64
    basis_emb_size: PositiveInt = 8
    out_emb_channels: PositiveInt = 256
    envelope_exponent: PositiveInt = 5


class MACEHyperparameters(CommonHyperparameters):
    """MACE: higher-order equivariant messages (``correlation`` 1 or 2 body orders in the product)."""

    family: Literal["mace"] = "mace"
    max_ell: Annotated[int, Field(ge=0, le=4, strict=True)] = 2
    hidden_ell: Annotated[int, Field(ge=0, le=3, strict=True)] = 1
    correlation: Literal[1, 2] = 2
    avg_num_neighbors: float = Field(32.0, gt=0, strict=True)


Aggregator = Literal["sum", "mean", "min", "max", "var", "std"]
Scaler = Literal["identity", "amplification", "attenuation", "linear", "inverse_linear"]
DEFAULT_AGGREGATORS: tuple[Aggregator, ...] = ("mean", "min", "max", "std")
DEFAULT_SCALERS: tuple[Scaler, ...] = ("identity", "amplification", "attenuation")


class PNAHyperparameters(CommonHyperparameters):
    """PNA: several aggregators scaled by degree."""

    family: Literal["pna"] = "pna"
    deg: list[Annotated[int, Field(ge=0, strict=True)]] | None = Field(
        None, description="In-degree histogram of the training data (None: every atom with 32 neighbours).")
    aggregators: list[Aggregator] = Field(default_factory=lambda: list(DEFAULT_AGGREGATORS), min_length=1)
    scalers: list[Scaler] = Field(default_factory=lambda: list(DEFAULT_SCALERS), min_length=1)
    towers: PositiveInt = 1

    @model_validator(mode="after")
    def _towers(self) -> PNAHyperparameters:
        if self.hidden % self.towers:
            raise ValueError(f"towers ({self.towers}) must divide hidden ({self.hidden})")
        return self


def _family_lower_case(raw: Any) -> Any:
    """Family names are case-insensitive (``PaiNN`` = ``painn``)."""
    if isinstance(raw, dict) and isinstance(raw.get("family"), str):
        return {**raw, "family": raw["family"].lower()}
    return raw


#: A model config of any family (the field of app configs that carry one).
ModelHyperparameters = Annotated[
    PaiNNHyperparameters | SchNetHyperparameters | EGNNHyperparameters | DimeNetPPHyperparameters
    | MACEHyperparameters | PNAHyperparameters,
    Field(discriminator="family"),
    BeforeValidator(_family_lower_case),
]

_ADAPTER: TypeAdapter[ModelHyperparameters] = TypeAdapter(ModelHyperparameters)

#: The schema of each family, by name.
FAMILY_SCHEMAS: dict[str, type[CommonHyperparameters]] = {
    "painn": PaiNNHyperparameters, "schnet": SchNetHyperparameters, "egnn": EGNNHyperparameters,
    "dimenet++": DimeNetPPHyperparameters, "mace": MACEHyperparameters, "pna": PNAHyperparameters,
}


def searchable(family: str) -> frozenset[str]:
    """The model hyperparameters of ``family`` an HPO campaign may search or fix."""
    return frozenset(FAMILY_SCHEMAS[family].model_fields) - NOT_SEARCHABLE


def parse_hyperparameters(raw: Any, where: str = "model config") -> ModelHyperparameters:
    """Validate a model config (``{"family": ..., ...}``; the family name is case-insensitive).

    Raises:
        models.appio.BadInput: naming ``where`` and the field.
    """
    if not isinstance(raw, dict):
        raise BadInput(f"{where}: must be an object with a 'family' field")
    family = str(raw.get("family", "")).lower()
    if family not in FAMILY_SCHEMAS:
        raise BadInput(f"{where}: field 'family' is {raw.get('family')!r}; choose one of {FAMILIES}")
    try:
        return _ADAPTER.validate_python(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = list(err["loc"])[1:]  # the first is the union's tag: the family, named once below
        field = f"field '{field_name(loc)}'" if loc else f"family {family!r}"
        why = reason(err)
        if err["type"] == "extra_forbidden" and len(loc) == 1:
            why = f"unknown field for family {family!r}; known: {', '.join(sorted(FAMILY_SCHEMAS[family].model_fields))}"
        raise BadInput(f"{where}: {field}: {why}") from None

"""The answer of a resolution: :class:`Resolved`, its :class:`ObjectiveConfig`, its
:class:`ShadowTarget` list and its :class:`Source`.

Answers are shared by the cache, the last-known-good map and every :class:`Resolved`
handed out for them, so everything here is immutable (mappings are read-only views).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Dict, Mapping, NamedTuple, Optional, Tuple

if TYPE_CHECKING:
    from ._proto.lightbulb.v1.lightbulb_pb2 import ObjectiveConfig as PbObjectiveConfig
    from ._proto.lightbulb.v1.lightbulb_pb2 import ShadowTarget as PbShadowTarget

class Source(enum.Enum):
    """Where an answer came from."""

    #: Lightbulb answered this call.
    FRESH = "fresh"
    #: From the local cache, within the TTL Lightbulb gave; no RPC was made.
    CACHED = "cached"
    #: Lightbulb could not be reached (or kept failing) within the deadline; this is the
    #: last answer it gave for the same context, however old.
    LAST_KNOWN_GOOD = "last_known_good"
    #: Lightbulb could not be reached and never answered this context; this is the static
    #: default configured for the objective.
    STATIC_DEFAULT = "static_default"

    @property
    def is_fallback(self) -> bool:
        """Whether the answer is a fallback (last known good or static default), i.e.
        Lightbulb was not reachable for this call."""
        return self in (Source.LAST_KNOWN_GOOD, Source.STATIC_DEFAULT)


@dataclass(frozen=True)
class ExperimentCell:
    """An experiment and the cell the subject is in."""

    experiment: str
    cell: str


@dataclass(frozen=True)
class ObjectiveConfig:
    """The selected model of an objective and everything the caller passes to it (in its
    own request body).

    Attributes:
        objective: the objective that was resolved.
        model_id: id of the selected model.
        model_version: version of the selected model; empty when the rule set gives none.
        experiment: the experiment (and cell) whose condition selected the model, if any.
        input_type: the input type the model expects, e.g. ``triton_v2``; may be empty.
        parameters: parameters to pass to the model (read-only).
        metadata: free-form metadata of the model (read-only).
    """

    objective: str = ""
    model_id: str = ""
    model_version: str = ""
    experiment: Optional[ExperimentCell] = None
    input_type: str = ""
    parameters: Mapping[str, str] = field(default_factory=dict)
    metadata: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # Read-only copies: the same config is handed to every caller of a cached answer.
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))
        object.__setattr__(self, "metadata", MappingProxyType(dict(self.metadata)))

    @classmethod
    def from_proto(cls, config: PbObjectiveConfig) -> ObjectiveConfig:
        """The config of a proto ``ObjectiveConfig``."""
        experiment = (
            ExperimentCell(config.experiment_id, config.experiment_cell)
            if config.experiment_id
            else None
        )
        return cls(
            objective=config.objective,
            model_id=config.model_id,
            model_version=config.model_version,
            experiment=experiment,
            input_type=config.input_type,
            parameters=dict(config.parameters),
            metadata=dict(config.metadata),
        )

    def to_dict(self) -> Dict[str, object]:
        """A plain, JSON-serialisable dict of the config (e.g. for a request body)."""
        return {
            "objective": self.objective,
            "model_id": self.model_id,
            "model_version": self.model_version,
            "experiment_id": self.experiment.experiment if self.experiment else "",
            "experiment_cell": self.experiment.cell if self.experiment else "",
            "input_type": self.input_type,
            "parameters": dict(self.parameters),
            "metadata": dict(self.metadata),
        }


@dataclass(frozen=True)
class ShadowTarget:
    """A model that should receive a sampled shadow copy of the request.

    Attributes:
        model_id: id of the shadow model.
        routing_key: its routing key.
        sample_percent: share of requests to mirror, in percent (0 to 100).
    """

    model_id: str
    routing_key: str
    sample_percent: float

    @classmethod
    def from_proto(cls, shadow: PbShadowTarget) -> ShadowTarget:
        """The target of a proto ``ShadowTarget``."""
        return cls(shadow.model_id, shadow.routing_key, shadow.sample_percent)


class Answer(NamedTuple):
    """One answer as kept by the caches (without its source)."""

    routing_key: str
    config: ObjectiveConfig
    shadows: Tuple[ShadowTarget, ...]
    rule_set_version: int


class Resolved(NamedTuple):
    """The answer of :meth:`Client.resolve <lightbulb_client.Client.resolve>`: an
    immutable named tuple.

    Attributes:
        routing_key: the routing key of the selected model, for the router's
            ``x-routing-key`` header.
        config: the selected model and what to pass to it.
        shadows: models that should receive a sampled shadow copy (possibly none).
        rule_set_version: version of the rule set that produced the answer; ``0`` for a
            :attr:`Source.STATIC_DEFAULT`.
        source: where the answer came from.
    """

    routing_key: str
    config: ObjectiveConfig
    shadows: Tuple[ShadowTarget, ...]
    rule_set_version: int
    source: Source

    @classmethod
    def of(cls, answer: Answer, source: Source) -> Resolved:
        """The answer as handed out, with where it came from."""
        return cls(*answer, source)


def is_valid_routing_key(key: str) -> bool:
    """Whether ``key`` can be sent as a header value and as gRPC ASCII metadata: non-empty
    visible ASCII, which is also what models-config allows in a routing key."""
    return bool(key) and all("!" <= ch <= "~" for ch in key)

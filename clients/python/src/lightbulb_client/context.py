"""What the client resolves: the request context of one inference request.

A :class:`RequestContext` is normalised when it is made (an empty tenant or subject id is
none, attributes and allocations are kept sorted by name), so two contexts with the same
content are equal, hash alike and share a cache entry whatever order they were built in.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Mapping, NamedTuple, Tuple, Union

from ._generated import pb

if TYPE_CHECKING:
    from ._proto.lightbulb.v1.lightbulb_pb2 import ResolveRequest
    from ._proto.lightbulb.v1.lightbulb_pb2 import TrafficClass as PbTrafficClass

Pairs = Tuple[Tuple[str, str], ...]


class TrafficClass(enum.Enum):
    """Live traffic from real users, or synthetic traffic (load tests, probes).

    The proto's ``TRAFFIC_CLASS_UNSPECIFIED`` is live traffic, as Lightbulb treats it.
    """

    #: Real user traffic. The default.
    LIVE = "live"
    #: Load tests, probes and other synthetic traffic.
    SYNTHETIC = "synthetic"

    # Members are singletons: the identity hash (in C) is enough, and it keeps hashing a
    # context, the cache key, cheap (Enum's own hash is Python code).
    __hash__ = object.__hash__

    def to_proto(self) -> PbTrafficClass:
        """The proto enum value (``TRAFFIC_CLASS_LIVE`` or ``TRAFFIC_CLASS_SYNTHETIC``)."""
        if self is TrafficClass.SYNTHETIC:
            return pb.TRAFFIC_CLASS_SYNTHETIC
        return pb.TRAFFIC_CLASS_LIVE


TrafficClassLike = Union[TrafficClass, str]


def _pairs(what: str, pairs: Mapping[str, str] | None) -> Pairs:
    if not pairs:
        return ()
    for name, value in pairs.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"{what} names and values must be str, got {name!r}: {value!r}")
    return tuple(sorted(pairs.items()))


class RequestContext(NamedTuple):
    """The context of one inference request: everything an objective's rules may read.

    An immutable, hashable named tuple; it is the client's cache key. Make one with
    :meth:`RequestContext.of` (which normalises its arguments) or
    :meth:`RequestContext.from_proto`; the constructor takes the normalised fields as they
    are.

    Attributes:
        objective: the business use case, e.g. ``ContinueWatchingRanking``. Required by
            Lightbulb: an empty objective is answered with ``INVALID_ARGUMENT``.
        tenant: the calling tenant; ``""``: no tenant.
        subject_id: stable id (user, session, account) that experiment allocation and
            weighted splits are sticky on; ``""``: no subject.
        attributes: request attributes such as country, device or surface, as
            ``(name, value)`` pairs sorted by name.
        experiment_allocations: experiment id → cell pairs, sorted, for a caller that
            already knows its allocation.
        traffic_class: live or synthetic traffic. Default live.
    """

    objective: str
    tenant: str = ""
    subject_id: str = ""
    attributes: Pairs = ()
    experiment_allocations: Pairs = ()
    traffic_class: TrafficClass = TrafficClass.LIVE

    @classmethod
    def of(
        cls,
        objective: str,
        *,
        subject_id: str | None = None,
        tenant: str | None = None,
        attributes: Mapping[str, str] | None = None,
        experiment_allocations: Mapping[str, str] | None = None,
        traffic_class: TrafficClassLike = TrafficClass.LIVE,
    ) -> RequestContext:
        """A context from plain arguments; ``None`` and ``""`` both mean "not set".

        Raises:
            TypeError: when the objective, tenant, subject id or a name or value of the
                attributes or allocations is not a ``str``.
            ValueError: when ``traffic_class`` is not ``"live"`` or ``"synthetic"``.
        """
        if not isinstance(objective, str):
            raise TypeError(f"objective must be str, got {objective!r}")
        if tenant is not None and not isinstance(tenant, str):
            raise TypeError(f"tenant must be str, got {tenant!r}")
        if subject_id is not None and not isinstance(subject_id, str):
            raise TypeError(f"subject_id must be str, got {subject_id!r}")
        return cls(
            objective,
            tenant or "",
            subject_id or "",
            _pairs("attribute", attributes),
            _pairs("experiment allocation", experiment_allocations),
            traffic_class if type(traffic_class) is TrafficClass else TrafficClass(traffic_class),
        )

    @classmethod
    def from_proto(cls, request: ResolveRequest) -> RequestContext:
        """The context of a proto ``ResolveRequest`` (it hits the same cache entries as the
        same context made with :meth:`of`).

        Raises:
            ValueError: for a traffic class other than unspecified, live or synthetic.
        """
        if request.traffic_class in (pb.TRAFFIC_CLASS_UNSPECIFIED, pb.TRAFFIC_CLASS_LIVE):
            traffic_class = TrafficClass.LIVE
        elif request.traffic_class == pb.TRAFFIC_CLASS_SYNTHETIC:
            traffic_class = TrafficClass.SYNTHETIC
        else:
            raise ValueError(f"unknown traffic class {request.traffic_class}")
        return cls.of(
            request.objective,
            tenant=request.tenant,
            subject_id=request.subject_id,
            attributes=dict(request.attributes),
            experiment_allocations=dict(request.experiment_allocations),
            traffic_class=traffic_class,
        )

    def to_proto(self) -> ResolveRequest:
        """The proto request sent to Lightbulb on a cache miss."""
        return pb.ResolveRequest(
            objective=self.objective,
            tenant=self.tenant,
            subject_id=self.subject_id,
            attributes=dict(self.attributes),
            experiment_allocations=dict(self.experiment_allocations),
            traffic_class=self.traffic_class.to_proto(),
        )

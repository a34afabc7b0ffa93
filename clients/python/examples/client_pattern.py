"""The client pattern: resolve with Lightbulb, then call the model through the router.

A service asks Lightbulb which model serves a request context, puts the routing key it gets
in the ``x-routing-key`` header, puts the ObjectiveConfig in its own request body, and
sends the request to the router, which forwards it to the model's cluster untouched. Only
the standard library is used for HTTP (urllib), so the pattern carries over to any client.

Run it against ``scripts/dev.sh``::

    python clients/python/examples/client_pattern.py \\
        --lightbulb http://127.0.0.1:50051 --router http://127.0.0.1:8080 \\
        --objective ContinueWatchingRanking --subject member-42 --attribute country=CA \\
        --path /v2/models/ranker/infer

It prints one JSON object: the routing key, where the answer came from, and the router's
answer (status, ``x-served-by`` and body).
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence

from lightbulb_client import Client, Resolved


@dataclass
class Reply:
    """What the router answered to one inference request."""

    resolved: Resolved
    status: int
    headers: Dict[str, str]
    body: bytes

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable summary."""
        text = self.body.decode("utf-8", errors="replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        return {
            "routing_key": self.resolved.routing_key,
            "model_id": self.resolved.config.model_id,
            "source": self.resolved.source.value,
            "status": self.status,
            "served_by": self.headers.get("x-served-by", ""),
            "body": body,
        }


def infer(
    client: Client,
    router: str,
    path: str,
    objective: str,
    inputs: Any,
    *,
    subject_id: Optional[str] = None,
    tenant: Optional[str] = None,
    attributes: Optional[Mapping[str, str]] = None,
    timeout: float = 5.0,
) -> Reply:
    """Resolves the context, then POSTs ``{"inputs": ..., "objective_config": ...}`` to
    ``router + path`` with the routing key in the client's routing header.

    The router's own errors (404 ``unknown_routing_key``, 503 ``no_healthy_upstream``, ...)
    are returned as replies like any other answer, not raised.

    Raises:
        lightbulb_client.LightbulbError: the context could not be resolved.
        urllib.error.URLError: the router could not be reached.
    """
    resolved = client.resolve(objective, subject_id=subject_id, tenant=tenant, attributes=attributes)
    headers = client.stamp(resolved, {"content-type": "application/json"})
    if tenant:
        headers["x-tenant-id"] = tenant
    body = json.dumps({"inputs": inputs, "objective_config": resolved.config.to_dict()}).encode()
    request = urllib.request.Request(
        router.rstrip("/") + path, data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(resolved, response.status, _lower(response.headers.items()), response.read())
    except urllib.error.HTTPError as err:
        with err:
            return Reply(resolved, err.code, _lower(err.headers.items()), err.read())


def _lower(items: Sequence[Any]) -> Dict[str, str]:
    return {name.lower(): value for name, value in items}


def _attribute(text: str) -> tuple:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, value


def main(argv: Optional[List[str]] = None) -> int:
    """Resolves once, calls the router once, prints the summary as JSON; exits 0 when the
    router answered 2xx, 1 otherwise, 2 when the context could not be resolved."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lightbulb", default="http://127.0.0.1:50051", help="Lightbulb's gRPC address")
    parser.add_argument("--router", default="http://127.0.0.1:8080", help="the router's proxy URL")
    parser.add_argument("--path", default="/v2/models/ranker/infer", help="request path at the router")
    parser.add_argument("--objective", default="ContinueWatchingRanking")
    parser.add_argument("--subject", default=None, help="subject id (sticky allocation)")
    parser.add_argument("--tenant", default=None)
    parser.add_argument("--attribute", action="append", type=_attribute, default=[], help="NAME=VALUE")
    parser.add_argument("--inputs", default="[1, 2, 3]", help="JSON model inputs")
    parser.add_argument("--deadline", type=float, default=2.0, help="Lightbulb budget, seconds")
    args = parser.parse_args(argv)

    from lightbulb_client import LightbulbError

    with Client(args.lightbulb, deadline=args.deadline) as client:
        try:
            reply = infer(
                client,
                args.router,
                args.path,
                args.objective,
                json.loads(args.inputs),
                subject_id=args.subject,
                tenant=args.tenant,
                attributes=dict(args.attribute),
            )
        except LightbulbError as err:
            print(json.dumps({"error": str(err), "kind": err.label}), file=sys.stderr)
            return 2
    print(json.dumps(reply.to_dict(), sort_keys=True))
    return 0 if 200 <= reply.status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())

"""The suite's one way to wait on Kubernetes objects: list, then watch, until named conditions decide.

Owns `wait_for`, the only watch loop of the suite, and the generic conditions `exists` and `gone`. Modelled on
kr8s's `wait` (list, then watch from the list's resourceVersion) and e2e-framework's `wait.For` with named
conditions: a condition is a callable of what was last seen of one object that returns a verdict, or None to
keep waiting. The pod conditions (`classify_pod` and friends) live with the pods in `pods.py` and
`sharing.py`; the waits for a namespace's ServiceAccount and for a deleted namespace use `exists` and `gone`.

Objects travel as the API server's JSON (list and watch both skip the client's model deserialization, which
parsed every timestamp of every event: in a 1000-node sweep that was a third of the suite's CPU time).

Every wait has one deadline. The watch runs in windows of a few seconds, and at each window's end the
undecided objects are judged again, so a condition that reads more than the object (the pod's events: a
sandbox the GPU runtime could not create never changes the pod) is noticed too. A 410 Gone (the watch's
resourceVersion expired) re-lists and watches on within the same deadline.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from kubernetes import watch
from kubernetes.client.rest import ApiException

from k8s_gpu_acceptance.cluster import REQUEST_TIMEOUT, api_json

WINDOW_S = 5.0
GONE = 410


@dataclass
class Seen:
    """What a wait last saw of one object: its JSON ({} until seen), and whether it went away since."""

    name: str
    obj: dict[str, Any] = field(default_factory=dict)
    deleted: bool = False


S = TypeVar("S", bound=Seen)
V = TypeVar("V")


@dataclass(frozen=True)
class Source:
    """A list call of the official client and its arguments, e.g. core.list_namespaced_pod, ("ns",).

    The watch streams the same call (the client reads its return type from the function's docstring, so
    the function is passed as it is, not wrapped)."""

    list_func: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Waited(Generic[S, V]):
    """The verdicts reached before the deadline, what was last seen of every object, and how long it took."""

    verdicts: dict[str, V]
    seen: dict[str, S]
    waited_s: float
    relists: int = 0

    @property
    def undecided(self) -> list[str]:
        return [name for name in self.seen if name not in self.verdicts]


class RawWatch(watch.Watch):
    """The official client's watch, its events' objects left as API JSON (no return type: no models)."""

    def get_return_type(self, func: Callable[..., Any]) -> None:
        return None


def exists(seen: Seen) -> bool | None:
    """Condition: the object is there."""
    return True if seen.obj and not seen.deleted else None


def gone(seen: Seen) -> bool | None:
    """Condition: the object is not there (never was, or was deleted)."""
    return True if seen.deleted or not seen.obj else None


def wait_for(
    source: Source,
    names: Iterable[str],
    condition: Callable[[S], V | None],
    *,
    new: Callable[[str], S],
    timeout_s: float,
    window_s: float = WINDOW_S,
    clock: Callable[[], float] = time.monotonic,
    watcher: Callable[[], Any] | None = None,
) -> Waited[S, V]:
    """List `source`, then watch it, until `condition` gives every object in `names` a verdict or the
    deadline passes (undecided objects are left out of `verdicts`).

    `new(name)` makes the Seen record (e.g. a PodState), whose `obj` is the object's API JSON. API errors
    other than 410 Gone propagate to the caller.
    `clock` and `watcher` (a Watch factory) are there for the unit test that scripts the API's answers.
    """
    started = clock()
    deadline = started + timeout_s
    seen = {name: new(name) for name in names}
    verdicts: dict[str, V] = {}
    relists = 0

    def judge(which: Iterable[str]) -> None:
        for name in which:
            if name not in verdicts:
                verdict = condition(seen[name])
                if verdict is not None:
                    verdicts[name] = verdict

    resource_version: str | None = None
    while len(verdicts) < len(seen):
        if resource_version is None:
            listing = api_json(
                source.list_func, *source.args, **source.kwargs, _request_timeout=REQUEST_TIMEOUT
            )
            listed = {item["metadata"]["name"]: item for item in listing.get("items") or []}
            for name, record in seen.items():
                if name in listed:
                    record.obj, record.deleted = listed[name], False
                elif record.obj:
                    record.deleted = True
            resource_version = listing["metadata"].get("resourceVersion")
            judge(seen)
            if len(verdicts) == len(seen):
                break
        remaining = deadline - clock()
        if remaining <= 0:
            break
        stream = watcher() if watcher is not None else RawWatch()
        try:
            for event in stream.stream(
                source.list_func,
                *source.args,
                **source.kwargs,
                resource_version=resource_version,
                timeout_seconds=max(1, int(min(window_s, remaining))),
                _request_timeout=(REQUEST_TIMEOUT[0], window_s + REQUEST_TIMEOUT[0]),
            ):
                obj = event["object"]
                metadata = obj.get("metadata") or {}
                resource_version = metadata.get("resourceVersion") or resource_version
                changed = str(metadata.get("name"))
                if event["type"] == "BOOKMARK" or changed not in seen or changed in verdicts:
                    continue
                record = seen[changed]
                record.obj, record.deleted = obj, event["type"] == "DELETED"
                judge([changed])
                if len(verdicts) == len(seen):
                    stream.stop()
                    break
        except ApiException as exc:
            if exc.status != GONE:
                raise
            resource_version, relists = None, relists + 1  # expired: list again, same deadline
            continue
        if clock() >= deadline:
            break
        judge(list(seen))  # the window closed: judge again what the object alone did not decide
    return Waited(verdicts, seen, round(clock() - started, 2), relists)

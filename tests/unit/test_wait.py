"""wait.wait_for, the suite's one list-then-watch loop, against a scripted API (simulated here: the list call,
the watch stream and the clock are scripted, so the deadline arithmetic is exact; objects are API JSON, as
the real list and watch return them). The real API server runs
the same code in tests/self (probe pod, scenario pods, namespace deletion)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from k8s_gpu_acceptance.pods import PodState, classify_pod
from k8s_gpu_acceptance.wait import RawWatch, Seen, Source, exists, gone, wait_for


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def obj(name: str, rv: str, **body: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "resourceVersion": rv}, **body}


class Response:
    """What the client returns with _preload_content=False: the body as bytes."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.data = json.dumps(body).encode()
        self.released = False

    def release_conn(self) -> None:
        self.released = True


class ScriptedApi:
    """`lists`: what each list call returns; `windows`: per watch window, a list of events, or an exception
    raised after the window's time has passed. A window without a stop lasts its timeout_seconds."""

    def __init__(self, clock: Clock, lists: list[list[dict[str, Any]]], windows: list[Any]) -> None:
        self.clock, self.lists, self.windows = clock, lists, windows
        self.list_calls, self.watch_calls = 0, []
        self.responses: list[Response] = []

    def list_things(self, *args: Any, **kwargs: Any) -> Response:
        assert kwargs["_preload_content"] is False  # API JSON, never the client's models
        items = self.lists[min(self.list_calls, len(self.lists) - 1)]
        self.list_calls += 1
        self.responses.append(
            Response({"items": items, "metadata": {"resourceVersion": f"list{self.list_calls}"}})
        )
        return self.responses[-1]

    def watcher(self) -> Any:
        api = self

        class Watch:
            stopped = False

            def stop(self) -> None:
                self.stopped = True

            def stream(self, func: Any, *args: Any, **kwargs: Any) -> Any:
                api.watch_calls.append(kwargs)
                window = api.windows.pop(0) if api.windows else []
                if isinstance(window, Exception):
                    api.clock.now += kwargs["timeout_seconds"]
                    raise window
                for event_type, item in window:
                    api.clock.now += 0.1
                    yield {"type": event_type, "object": item}
                    if self.stopped:
                        return
                api.clock.now += kwargs["timeout_seconds"]

        return Watch()


def run(api: ScriptedApi, names: list[str], condition: Any, timeout_s: float, new: Any = Seen) -> Any:
    return wait_for(
        Source(api.list_things, ("ns",)),
        names,
        condition,
        new=new,
        timeout_s=timeout_s,
        window_s=5,
        clock=api.clock,
        watcher=api.watcher,
    )


def test_decided_by_the_list_needs_no_watch():
    api = ScriptedApi(Clock(), [[obj("default", "1")]], [])
    waited = run(api, ["default"], exists, 30)
    assert waited.verdicts == {"default": True} and api.watch_calls == []
    assert waited.seen["default"].obj == obj("default", "1")
    assert all(r.released for r in api.responses)  # the connection goes back to the pool


def test_410_gone_relists_within_the_same_deadline():
    clock = Clock()
    api = ScriptedApi(clock, [[]], [ApiException(status=410, reason="Gone"), [], []])
    waited = run(api, ["default"], exists, 12)
    assert waited.verdicts == {} and waited.undecided == ["default"]
    assert waited.relists == 1 and api.list_calls == 2
    # 5 s until the 410, then windows of 5 s and 2 s: the deadline is the one set at the start (12 s),
    # not 5 s + a fresh 12 s.
    assert waited.waited_s == 12
    assert [call["timeout_seconds"] for call in api.watch_calls] == [5, 5, 2]
    assert api.watch_calls[1]["resource_version"] == "list2"  # watches on from the new list


def test_other_api_errors_reach_the_caller():
    api = ScriptedApi(Clock(), [[]], [ApiException(status=403, reason="Forbidden")])
    with pytest.raises(ApiException) as raised:
        run(api, ["x"], exists, 30)
    assert raised.value.status == 403


def test_watch_events_decide_each_object_and_deleted_objects_are_gone():
    api = ScriptedApi(
        Clock(),
        [[obj("ns-a", "1"), obj("ns-b", "1")]],
        [[("MODIFIED", obj("ns-a", "2")), ("DELETED", obj("ns-b", "3")), ("DELETED", obj("ns-a", "4"))]],
    )
    waited = run(api, ["ns-a", "ns-b"], gone, 30)
    assert waited.verdicts == {"ns-a": True, "ns-b": True}
    assert waited.seen["ns-b"].deleted and waited.seen["ns-b"].obj == obj("ns-b", "3")
    assert waited.waited_s < 1  # stopped at the last verdict, not at the window's end


def test_a_window_that_closes_without_events_judges_again():
    """A condition that reads more than the object (a pod's events) decides without any watch event."""
    calls = []

    def fatal_event_on_second_look(state: PodState) -> str | None:
        calls.append(state.name)
        events = [{"type": "Warning", "reason": "FailedCreatePodSandBox", "message": "no runtime"}]
        verdict = classify_pod(state.obj, events if len(calls) > 1 else [])
        return verdict.failure.kind if verdict.failure else None

    pending = obj("p", "1", spec={"nodeName": "n1"}, status={"phase": "Pending"})
    api = ScriptedApi(Clock(), [[pending]], [[]])
    waited = run(api, ["p"], fatal_event_on_second_look, 60, new=PodState)
    assert waited.verdicts == {"p": "sandbox"} and calls == ["p", "p"]
    assert waited.waited_s == 5


class StreamedResponse:
    """A watch response as urllib3 streams it: newline-separated events, in arbitrary chunks."""

    def __init__(self, lines: list[dict[str, Any]]) -> None:
        self.body = b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    def stream(self, amt: Any = None, decode_content: bool = False) -> Any:
        yield from (self.body[i : i + 7] for i in range(0, len(self.body), 7))

    def close(self) -> None: ...

    def release_conn(self) -> None: ...


def test_raw_watch_gives_api_json_and_raises_a_410_error_event():
    """RawWatch is the official client's Watch with models turned off: what wait_for's 410 handling needs."""
    pod = obj("p", "7", status={"phase": "Running", "startTime": "2026-11-26T05:30:00Z"})

    def list_pods(namespace: str, **kwargs: Any) -> StreamedResponse:
        assert kwargs["watch"] is True and kwargs["_preload_content"] is False
        gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version"}
        return StreamedResponse([{"type": "MODIFIED", "object": pod}, {"type": "ERROR", "object": gone}])

    events = RawWatch().stream(list_pods, "ns", timeout_seconds=5)
    assert next(events)["object"] == pod  # a dict, its times still strings: nothing parsed
    with pytest.raises(ApiException) as raised:
        next(events)
    assert raised.value.status == 410

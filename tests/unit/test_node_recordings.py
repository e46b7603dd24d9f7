"""The testbed's node-level recording: a node annotated with a recording makes every probe pod there print
it (one bad node in a fleet sweep), unless the pod names its own."""

from __future__ import annotations

from testbed.recordings import container_recordings
from testbed.stages import RECORDING_ANNOTATION

GPU_POD = {"containers": [{"name": "probe", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}


def test_the_node_annotation_applies_when_the_pod_names_none(tmp_path):
    bad_node = {RECORDING_ANNOTATION: "cpu"}
    assert container_recordings({}, GPU_POD, tmp_path, node_annotations=bad_node) == {"probe": "cpu"}
    assert container_recordings({}, GPU_POD, tmp_path, node_annotations={}) == {"probe": "h100"}
    own = {RECORDING_ANNOTATION: "garbled"}
    assert container_recordings(own, GPU_POD, tmp_path, node_annotations=bad_node) == {"probe": "garbled"}

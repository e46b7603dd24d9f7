"""Container images without a registry: OCI archives written from host files, imported into containerd.

The real node pulls nothing. Every image it runs is written here from files that are already on this host
(an OCI image layout: `oci-layout`, `index.json` naming the image with `io.containerd.image.name`,
`blobs/sha256/...`, in one uncompressed tar) and loaded with `ctr -n k8s.io images import`:

- the sandbox image: the static `pause` built from the Kubernetes module's pause.c (testbed/build.py);
- the probe image: this host's python3 with its standard library and the shared libraries they load
  (found with ldd), plus a passwd entry for the probe's UID 10001; any list of host paths can be given
  (on a GPU host: the torch venv), see `probe_image_spec`;
- the fake GPU device plugin's image: its one static binary.

An image's tag is a digest of what goes into it, so a changed host file gives a new name, never a stale image.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from testbed.errors import TestbedError

REGISTRY = "k8s-gpu-acceptance.local"  # not a registry: a name prefix no pull can ever resolve
PROBE_UID = 10001
# Parts of the standard library the probe never imports (tests, GUI, bundled pip wheels): smaller image.
STDLIB_EXCLUDE = ("test", "idlelib", "tkinter", "turtledemo", "ensurepip", "lib2to3", "pydoc_data")
LDD_BATCH = 200


@dataclass(frozen=True)
class ImageSpec:
    """What goes into one image: host paths kept at their own place (with their ELF closure) plus files."""

    repository: str  # e.g. k8s-gpu-acceptance.local/gpu-probe-cpu
    tag_prefix: str  # e.g. py3.11; the content digest is appended
    paths: tuple[str, ...] = ()  # host files/dirs, copied at the same path (symlinks kept)
    files: dict[str, bytes | Path] = field(default_factory=dict)  # image path -> content or host file
    exclude_names: tuple[str, ...] = ()  # directory entries skipped by name anywhere under `paths`
    user: str = ""
    env: tuple[str, ...] = ("PATH=/usr/local/bin:/usr/bin:/bin",)
    cmd: tuple[str, ...] = ()
    elf_closure: bool = True
    # Large images (a GPU host's torch environment, gigabytes) are streamed into `ctr images import -`
    # instead of written to disk twice (layer, then archive): the layer is generated once to learn its
    # digest and once more straight into containerd.
    stream: bool = False


@dataclass(frozen=True)
class Entry:
    """One member of the layer: a directory, regular file (from a host path or bytes) or symlink."""

    kind: str  # "dir" | "file" | "link"
    host: str = ""
    data: bytes | None = None
    target: str = ""
    mode: int = 0o755


@dataclass(frozen=True)
class BuiltImage:
    """An image ready to import: its full name (repository:tag) and the tar file, or, for a streamed image,
    what to generate the archive from at import time."""

    name: str
    archive: Path | None
    size: int
    spec: ImageSpec | None = None
    entries: dict[str, Entry] | None = None


class RootFS:
    """The image's file tree, collected from host paths; parents and symlink targets come along."""

    def __init__(self, exclude_names: Sequence[str] = ()) -> None:
        self.entries: dict[str, Entry] = {}
        self.exclude = set(exclude_names)
        self.walked: set[str] = set()  # directories whose contents were added (not only as a parent)

    def add_host_path(self, path: str) -> None:
        """Add a host file/dir at its own path; a symlinked component (e.g. /lib -> usr/lib) is kept too."""
        path = os.path.normpath(os.path.abspath(path))
        known = self.entries.get(path.lstrip("/"))
        if (known is not None and (known.kind != "dir" or path in self.walked)) or not os.path.lexists(path):
            return
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            prefix = "/" + "/".join(parts[:i])
            if os.path.islink(prefix):
                self._add_link(prefix)
                real = os.path.join(os.path.dirname(prefix), os.readlink(prefix), *parts[i:])
                self.add_host_path(real)
                return
            self._add_dir(prefix, recurse=False)
        if os.path.islink(path):
            self._add_link(path)
            target = os.path.join(os.path.dirname(path), os.readlink(path))
            self.add_host_path(target)
        elif os.path.isdir(path):
            self._add_dir(path, recurse=True)
        elif os.path.isfile(path):
            self.entries[path.lstrip("/")] = Entry(
                "file", host=path, mode=stat.S_IMODE(os.stat(path).st_mode)
            )

    def _add_link(self, path: str) -> None:
        self.entries[path.lstrip("/")] = Entry("link", target=os.readlink(path))

    def _add_dir(self, path: str, recurse: bool) -> None:
        self.entries.setdefault(path.lstrip("/"), Entry("dir", mode=stat.S_IMODE(os.stat(path).st_mode)))
        if not recurse or path in self.walked:
            return
        self.walked.add(path)
        for name in sorted(os.listdir(path)):
            if name not in self.exclude:
                self.add_host_path(os.path.join(path, name))

    def add_file(self, image_path: str, content: bytes | Path, mode: int = 0o644) -> None:
        """A file at a path of our choosing (the pause binary at /pause, /etc/passwd)."""
        image_path = image_path.strip("/")
        parent = os.path.dirname(image_path)
        while parent:
            self.entries.setdefault(parent, Entry("dir", mode=0o755))
            parent = os.path.dirname(parent)
        if isinstance(content, Path):
            mode = stat.S_IMODE(content.stat().st_mode)
            self.entries[image_path] = Entry("file", host=str(content), mode=mode)
        else:
            self.entries[image_path] = Entry("file", data=content, mode=mode)

    def elf_files(self) -> list[str]:
        """Host paths of the ELF files collected so far (programs and shared libraries)."""
        found = []
        for entry in self.entries.values():
            if entry.kind == "file" and entry.host:
                with open(entry.host, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        found.append(entry.host)
        return found

    def add_elf_closure(self) -> None:
        """Add every shared library the collected ELF files load (ldd), until nothing new appears."""
        done: set[str] = set()
        while True:
            todo = [f for f in self.elf_files() if f not in done]
            if not todo:
                return
            for lib in shared_libraries(todo):
                if not is_driver_library(lib):
                    self.add_host_path(lib)
            done.update(todo)


def is_driver_library(path: str) -> bool:
    """A library of the NVIDIA driver: CDI mounts the host's into GPU pods, an image must never carry one
    (a copy would give pods without a GPU the driver, and pods with one a second, maybe older, driver)."""
    name = os.path.basename(path)
    return name.startswith(("libnvidia-", "libcuda.so", "libcudadebugger", "libnvcuvid", "libnvoptix"))


def shared_libraries(files: Sequence[str]) -> set[str]:
    """The absolute library paths ldd names for these files (static files and non-ELF data are skipped)."""
    libs: set[str] = set()

    def ldd(batch: Sequence[str]) -> str:
        return subprocess.run(["ldd", *batch], capture_output=True, text=True, check=False).stdout

    batches = [files[i : i + LDD_BATCH] for i in range(0, len(files), LDD_BATCH)]
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        outputs = list(pool.map(ldd, batches))
    for output in outputs:
        for line in output.splitlines():
            line = line.strip()
            if "=>" in line:
                target = line.split("=>", 1)[1].strip().split(" (")[0].strip()
            else:
                target = line.split(" (")[0].strip()
            if target.startswith("/") and not target.endswith(":") and os.path.exists(target):
                libs.add(target)
    return libs


def write_layer(entries: dict[str, Entry], out: Path | IO[bytes] | io.RawIOBase) -> None:
    """An uncompressed, reproducible layer tar (sorted, root-owned; host mtimes kept so .pyc stay valid).

    `out` is a path, or a stream written sequentially (a pipe, a hashing sink): same bytes either way.
    """
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(out.open("wb")) if isinstance(out, Path) else out
        tar = stack.enter_context(tarfile.open(fileobj=fh, mode="w|", format=tarfile.PAX_FORMAT))
        for path in sorted(entries):
            entry = entries[path]
            info = tarfile.TarInfo(path)
            info.uid = info.gid = 0
            info.mode = entry.mode
            if entry.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif entry.kind == "link":
                info.type = tarfile.SYMTYPE
                info.linkname = entry.target
                tar.addfile(info)
            elif entry.data is not None:
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
            else:
                st = os.stat(entry.host)
                info.size, info.mtime = st.st_size, int(st.st_mtime)
                with open(entry.host, "rb") as fh:
                    tar.addfile(info, fh)


def content_key(spec: ImageSpec, entries: dict[str, Entry]) -> str:
    """Digest of everything that ends up in the image (file identity by size and mtime, not by reading it)."""
    digest = hashlib.sha256(repr((spec.user, spec.env, spec.cmd)).encode())
    for path in sorted(entries):
        e = entries[path]
        if e.kind == "file" and e.host:
            st = os.stat(e.host)
            ident = f"{st.st_size}:{st.st_mtime_ns}"
        elif e.data is not None:
            ident = hashlib.sha256(e.data).hexdigest()
        else:
            ident = e.target
        digest.update(f"{path}\0{e.kind}\0{e.mode}\0{ident}\n".encode())
    return digest.hexdigest()[:12]


def sha256_file(path: Path) -> str:
    """The blob digest of a file, read in chunks (layers can be gigabytes on a GPU host)."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def collect(spec: ImageSpec) -> dict[str, Entry]:
    """The image's entries: host paths, their ELF closure, then the extra files."""
    rootfs = RootFS(spec.exclude_names)
    for path in spec.paths:
        if not os.path.lexists(path):
            raise TestbedError(f"image {spec.repository}: host path {path} does not exist")
        rootfs.add_host_path(path)
    if spec.elf_closure:
        rootfs.add_elf_closure()
    for image_path, content in spec.files.items():
        rootfs.add_file(image_path, content)
    return rootfs.entries


def build_image(spec: ImageSpec, cache: Path) -> BuiltImage:
    """Write the OCI archive of `spec` into `cache` (reused when its content key is unchanged)."""
    entries = collect(spec)
    tag = f"{spec.tag_prefix}-{content_key(spec, entries)}"
    name = f"{spec.repository}:{tag}"
    if spec.stream:
        size = sum(os.stat(e.host).st_size for e in entries.values() if e.kind == "file" and e.host)
        return BuiltImage(name, None, size, spec, entries)
    archive = cache / f"{spec.repository.rsplit('/', 1)[-1]}-{tag}.tar"
    if archive.is_file():
        return BuiltImage(name, archive, archive.stat().st_size)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        layer = Path(tmp) / "layer.tar"
        write_layer(entries, layer)
        write_oci_archive(name, spec, layer, Path(tmp) / "image.tar")
        os.replace(Path(tmp) / "image.tar", archive)
    return BuiltImage(name, archive, archive.stat().st_size)


def _blob(tar: tarfile.TarFile, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_oci_archive(name: str, spec: ImageSpec, layer: Path, out: Path) -> None:
    """oci-layout + index.json (with io.containerd.image.name) + config, manifest and layer blobs, one tar."""
    with tarfile.open(out, "w") as tar:
        size = layer.stat().st_size
        with layer.open("rb") as fh:
            _write_archive(tar, name, spec, sha256_file(layer), size, lambda info: tar.addfile(info, fh))


class _HashSink(io.RawIOBase):
    """A write-only stream that keeps the sha256 and the length of what went through it."""

    def __init__(self) -> None:
        super().__init__()
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += view.nbytes
        return view.nbytes


def stream_import(base: list[str], image: BuiltImage, timeout: float = 1800) -> None:
    """Import a streamed image: generate its layer once for the digest, then again into `ctr import -`."""
    assert image.spec is not None and image.entries is not None
    entries = image.entries
    sink = _HashSink()
    write_layer(entries, sink)
    digest, size = sink.digest.hexdigest(), sink.size
    proc = subprocess.Popen(
        [*base, "images", "import", "--platform", "linux/amd64", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    read_end, write_end = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with os.fdopen(write_end, "wb") as pipe:
                write_layer(entries, pipe)
        except BaseException as exc:  # reported by the consumer below
            failure.append(exc)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        with os.fdopen(read_end, "rb") as layer, tarfile.open(fileobj=proc.stdin, mode="w|") as tar:
            _write_archive(tar, image.name, image.spec, digest, size, lambda info: tar.addfile(info, layer))
        proc.stdin.close()
        output = proc.stdout.read().decode(errors="replace")
        rc = proc.wait(timeout=timeout)
    finally:
        producer.join(timeout=60)
        if proc.poll() is None:
            proc.kill()
    if failure or rc != 0:
        raise TestbedError(f"streaming {image.name} into `ctr images import -` failed: {failure or output}")


def _write_archive(
    tar: tarfile.TarFile,
    name: str,
    spec: ImageSpec,
    layer_digest: str,
    layer_size: int,
    add_layer: Callable[[tarfile.TarInfo], None],
) -> None:
    """The archive's members: the layer blob (written by `add_layer`), config, manifest, index, layout."""
    config: dict[str, object] = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": list(spec.env), "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
        "history": [{"created_by": "k8s-gpu-acceptance testbed/images.py (host files, no registry)"}],
    }
    if spec.user:
        config["config"]["User"] = spec.user  # type: ignore[index]
    if spec.cmd:
        config["config"]["Cmd"] = list(spec.cmd)  # type: ignore[index]
    info = tarfile.TarInfo(f"blobs/sha256/{layer_digest}")
    info.size = layer_size
    add_layer(info)
    config_desc = _blob(tar, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config_desc},
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": f"sha256:{layer_digest}",
                "size": info.size,
            }
        ],
    }
    manifest_desc = _blob(tar, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **manifest_desc,
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                },
            }
        ],
    }
    for member, data in (
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True).encode()),
    ):
        info = tarfile.TarInfo(member)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def import_images(ctr: Path, address: str, images: Iterable[BuiltImage]) -> None:
    """Load the archives into containerd's k8s.io namespace (what the CRI uses) and pin them against GC."""
    base = [str(ctr), "--address", address, "--namespace", "k8s.io"]
    for image in images:
        steps = [["images", "label", image.name, "io.cri-containerd.pinned=pinned"]]
        if image.archive is None:
            stream_import(base, image)
        else:
            steps.insert(0, ["images", "import", "--platform", "linux/amd64", str(image.archive)])
        for args in steps:
            proc = subprocess.run([*base, *args], capture_output=True, text=True, timeout=600, check=False)
            if proc.returncode != 0:
                raise TestbedError(f"`ctr {' '.join(args)}` failed: {proc.stdout}{proc.stderr}".strip())


# --- the testbed's images -----------------------------------------------------------------------------


def passwd_files(uid: int = PROBE_UID) -> dict[str, bytes | Path]:
    """A passwd/group naming root and the probe user (getpass in the probe looks the UID up)."""
    return {
        "etc/passwd": f"root:x:0:0:root:/root:/bin/sh\nprobe:x:{uid}:{uid}:probe:/tmp:/bin/sh\n".encode(),
        "etc/group": f"root:x:0:\nprobe:x:{uid}:\n".encode(),
    }


def probe_image_spec(extra_paths: Sequence[str] = (), python: str = "/usr/bin/python3") -> ImageSpec:
    """This host's python3 with its standard library, plus `extra_paths` (a GPU host adds its torch venv).

    The interpreter is the system one (its stdlib is found relative to it); the probe itself is not in the
    image: the suite mounts it from a ConfigMap at /opt/gpu-probe, as on any cluster.
    """
    real = os.path.realpath(python)
    asked = subprocess.run(
        [real, "-c", "import sys, sysconfig; print(f'{sys.version_info[0]}.{sys.version_info[1]}'); "
         "print(sysconfig.get_paths()['stdlib'])"],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    version, stdlib = asked.stdout.split()
    return ImageSpec(
        repository=f"{REGISTRY}/gpu-probe-host-python",
        tag_prefix=f"py{version}",
        paths=(python, stdlib, *extra_paths),
        files=passwd_files(),
        exclude_names=STDLIB_EXCLUDE,
        user=f"{PROBE_UID}:{PROBE_UID}",
        env=(f"PATH={image_path(python)}", "LANG=C.UTF-8"),
        cmd=("python3",),
    )


def image_path(python: str) -> str:
    """PATH for the image: the interpreter's own directory first (a venv's bin/ holds its python3)."""
    system = ["/usr/local/bin", "/usr/bin", "/bin"]
    first = os.path.dirname(os.path.abspath(python))
    return ":".join([first, *(d for d in system if d != first)])


def pause_image_spec(pause_binary: Path, version: str) -> ImageSpec:
    """The sandbox image: only /pause, as upstream's image."""
    return ImageSpec(
        repository=f"{REGISTRY}/pause",
        tag_prefix=version,
        files={"pause": pause_binary},
        user="65535:65535",
        env=(),
        cmd=("/pause",),
        elf_closure=False,
    )


def device_plugin_image_spec(binary: Path) -> ImageSpec:
    """The FAKE GPU device plugin's image: its one static binary."""
    return ImageSpec(
        repository=f"{REGISTRY}/fake-gpu-device-plugin",
        tag_prefix="v1beta1",
        files={"fake-gpu-device-plugin": binary},
        env=(),
        cmd=("/fake-gpu-device-plugin",),
        elf_closure=False,
    )

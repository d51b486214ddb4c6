"""An `--out` given as a filesystem URI (`s3://bucket/run`, `gs://...`, `hdfs://...`,
`file:///...`): the pyarrow filesystem it names, the URI as it may be shown (credentials
removed), the check that it can be written before anything is sent, and the local state
directory that holds what needs POSIX (the run lock, the answer journal, the event log).

A plain path is not a URI: it stays the native output directory of batch/layout.py.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.fs as pafs

from batch.cache.location import default_cache_dir
from batch.errors import ConfigError, OutputError

# The local state of URI outputs, one directory per output, under the user cache directory.
STATE_SUBDIR = "outputs"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# Query parameters that carry credentials (pyarrow's S3 and GCS options, SAS tokens).
_SECRET_PARAM = re.compile(r"key|secret|token|password|credential|sig", re.IGNORECASE)
_ACCESS_ADVICE = (
    "check the URI and the credentials (the usual variables of pyarrow's filesystems, e.g. "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE for s3://, "
    "GOOGLE_APPLICATION_CREDENTIALS for gs://), or use another --out"
)
_SCHEME_ADVICE = (
    "use a local path or a URI that pyarrow.fs.FileSystem.from_uri knows "
    "(file://, s3://, gs://, hdfs://, abfs://)"
)


def is_uri(out: str | os.PathLike[str]) -> bool:
    """Whether `--out` names a filesystem URI (`scheme://...`) rather than a local path."""
    return isinstance(out, str) and bool(_SCHEME.match(out))


@dataclass(frozen=True)
class OutputURI:
    """An output on a pyarrow filesystem: `filesystem` and `base` (the output's path in it)
    are what the run writes through; `shown` is the only form that appears in messages,
    the summary or the manifest. Its repr carries no credential."""

    filesystem: pafs.FileSystem = field(repr=False, compare=False)
    base: str
    shown: str
    state_dir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(4), compare=False)

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` (e.g. `results/part-00001-ab12.parquet`)."""
        return f"{self.base}/{relative}" if relative else self.base

    def __str__(self) -> str:
        return self.shown


def shown_uri(uri: str) -> str:
    """`uri` without credentials: no user or password, no secret query parameter."""
    parts = urlsplit(uri)
    host = parts.netloc.rpartition("@")[2]
    query = [(k, v) for k, v in parse_qsl(parts.query) if not _SECRET_PARAM.search(k)]
    return urlunsplit((parts.scheme, host, parts.path, urlencode(query, safe=":/"), ""))


def _uri_secrets(uri: str) -> list[str]:
    """The credential strings in `uri`, as written and decoded, longest first."""
    parts = urlsplit(uri)
    found: list[str] = []
    userinfo = parts.netloc.rpartition("@")[0]
    if userinfo:
        found += [userinfo, *userinfo.split(":", 1)]
    found += [v for k, v in parse_qsl(parts.query) if _SECRET_PARAM.search(k)]
    found += [unquote(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, uri: str) -> str:
    """`text` (a filesystem's error message) with `uri`'s credentials replaced by ***."""
    text = text.replace(uri, shown_uri(uri))
    for secret in _uri_secrets(uri):
        text = text.replace(secret, "***")
    return text


def state_dir_for(shown: str, env: Mapping[str, str]) -> Path:
    """The default local state directory of the output `shown`: one per output URI (the
    hash of the URI without credentials), named after its last path segment."""
    digest = hashlib.sha256(shown.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", shown.rstrip("/").rpartition("/")[2])[:40]
    return default_cache_dir(env) / STATE_SUBDIR / f"{name or 'out'}-{digest}"


def open_output_uri(
    uri: str,
    *,
    state_dir: Path | None = None,
    env: Mapping[str, str] | None = None,
    probe: bool = True,
) -> OutputURI:
    """The filesystem `uri` names, checked by writing and deleting a probe object there
    (unless not `probe`: a reader); OutputError in one line (naming the URI without its
    credentials, and what to do) when the scheme is unknown or the place cannot be reached
    or written."""
    shown = shown_uri(uri)
    try:
        filesystem, base = pafs.FileSystem.from_uri(uri)
    except (pa.ArrowException, OSError, ValueError) as exc:
        reason = scrub(_first_line(exc), uri)
        advice = _SCHEME_ADVICE if "filesystem type" in reason.lower() else _ACCESS_ADVICE
        raise OutputError(f"cannot use --out {shown}: {reason}; {advice}") from None
    base = base.rstrip("/")
    state = state_dir if state_dir is not None else state_dir_for(shown, env or os.environ)
    if not probe:
        return OutputURI(filesystem, base, shown, state)
    return open_output_on(filesystem, base, shown=shown, state_dir=state, scrub_uri=uri)


def open_output_on(
    filesystem: pafs.FileSystem,
    base: str,
    *,
    shown: str | None = None,
    state_dir: Path | None = None,
    scrub_uri: str = "",
) -> OutputURI:
    """An output at `base` on `filesystem` (an object given by a Python caller, or the
    filesystem of a URI), checked writable like `open_output_uri`."""
    base = base.rstrip("/")
    shown = shown or f"{filesystem.type_name}://{base}"
    state = state_dir if state_dir is not None else state_dir_for(shown, os.environ)
    output = OutputURI(filesystem, base, shown, state)
    try:
        check_object_writable(output)
    except (pa.ArrowException, OSError) as exc:
        reason = scrub(_first_line(exc), scrub_uri) if scrub_uri else _first_line(exc)
        raise OutputError(f"cannot write --out {shown}: {reason}; {_ACCESS_ADVICE}") from None
    return output


def check_object_writable(output: OutputURI) -> None:
    """Create the output's directory (where the filesystem has them) and PUT then delete
    a probe object in it: what fails here would fail the first commit."""
    fs = output.filesystem
    info = fs.get_file_info(output.base)
    if info.type == pafs.FileType.File:
        raise OSError(f"{output.shown} is a file, not a directory")
    fs.create_dir(output.base, recursive=True)
    probe = output.path(f".gigabatch-probe-{output.token}")
    with fs.open_output_stream(probe) as f:
        f.write(b"\0" * 1024)
    fs.delete_file(probe)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def resolve_output(
    out: str | os.PathLike[str],
    *,
    state_dir: Path | None = None,
    filesystem: pafs.FileSystem | None = None,
) -> tuple[Path, OutputURI | None]:
    """Where a run keeps its local files, and its output URI if `out` is one (or a path
    on `filesystem`, from a Python caller). A local `out` is its own state directory."""
    if filesystem is not None:
        output = open_output_on(filesystem, os.fspath(out), state_dir=state_dir)
    elif is_uri(out):
        output = open_output_uri(str(out), state_dir=state_dir)
    elif state_dir is not None:
        raise ConfigError(
            "--state-dir is for an --out URI: a local --out keeps its state in itself"
        )
    else:
        return Path(out), None
    return output.state_dir, output

"""Google Cloud Vertex AI's custom-container contract, the part `serve` does before any worker starts: copying the
model directory that AIP_STORAGE_URI names (the Model's artifactUri) out of Cloud Storage.

Vertex AI mounts nothing: the container fetches its own files ("Custom container requirements for prediction",
Google Cloud's Vertex AI documentation, "Model artifacts"). The copy uses Google's own client (google-cloud-storage),
so credentials come from the environment as every Google library reads them (the Vertex AI service agent's on
Vertex, STORAGE_EMULATOR_HOST's emulator in the tests). What is copied is then checked like any model directory
(read_serving_config: the manifest, the remote-code policy) by `serve`.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path, PurePosixPath

from model_handlers.errors import ModelDirectoryError

logger = logging.getLogger("searchbox")


def split(uri: str) -> tuple[str, str]:
    """gs://bucket/some/prefix -> ("bucket", "some/prefix"); the prefix is "" for a whole bucket."""
    bucket, _, prefix = uri.removeprefix("gs://").partition("/")
    return bucket, prefix.strip("/")


def directory_name(uri: str) -> str:
    """The name the copy gets (a model without searchbox.json answers to it): the prefix's last part, or the
    bucket's name."""
    bucket, prefix = split(uri)
    return PurePosixPath(prefix).name if prefix else bucket


def copy_model(uri: str, target: Path) -> int:
    """Copy every object under the Cloud Storage directory `uri` into the new directory `target`; how many files.

    Raises:
        ModelDirectoryError: one line saying why: the client is not installed, no credentials, the bucket does not
            exist or cannot be read, nothing under the prefix, or an object name that would land outside `target`.
    """
    try:
        with warnings.catch_warnings():
            # google.api_core's notice that it will drop this Python some day: not the operator's concern at start
            warnings.simplefilter("ignore", FutureWarning)
            from google.api_core import exceptions as api_exceptions
            from google.auth import exceptions as auth_exceptions
            from google.cloud import storage
    except ImportError:
        raise ModelDirectoryError(f"AIP_STORAGE_URI={uri} needs google-cloud-storage, which this installation lacks "
                                  "(the slim image, or no `vertex` extra): install searchbox[vertex]") from None
    bucket_name, prefix = split(uri)
    started = time.monotonic()
    target.mkdir(mode=0o700)
    try:
        client = storage.Client()
        # a directory's objects: "prefix/" so that gs://b/model does not also take gs://b/model-old/...
        blobs = list(client.list_blobs(bucket_name, prefix=f"{prefix}/" if prefix else None))
        files = 0
        for blob in blobs:
            relative = blob.name[len(prefix) + 1:] if prefix else blob.name
            if not relative or relative.endswith("/"):
                continue  # a "folder" placeholder object the console makes
            parts = PurePosixPath(relative).parts
            if PurePosixPath(relative).is_absolute() or ".." in parts:
                raise ModelDirectoryError(f"refused to copy gs://{bucket_name}/{blob.name}: its name leads outside "
                                          "the model directory")
            destination = target.joinpath(*parts)
            destination.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            blob.download_to_filename(str(destination))
            files += 1
    except api_exceptions.NotFound:
        raise ModelDirectoryError(f"cannot copy the model from {uri}: the bucket gs://{bucket_name} does not "
                                  "exist") from None
    except api_exceptions.Forbidden as exc:
        raise ModelDirectoryError(f"cannot copy the model from {uri}: access denied ({_first_line(exc)}); grant "
                                  "the Vertex AI service agent roles/storage.objectViewer on the bucket") from None
    except (api_exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError, OSError) as exc:
        raise ModelDirectoryError(f"cannot copy the model from {uri}: {_first_line(exc)}") from None
    if files == 0:
        raise ModelDirectoryError(f"cannot copy the model from {uri}: no objects under it (is the Model's "
                                  "artifactUri the directory holding the model's files?)")
    logger.info("copied %s (%d files, %.0f MB) into %s in %.1f s; it is removed at exit", uri, files,
                sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 1e6, target,
                time.monotonic() - started)
    return files


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]

"""Few-shot classifiers trained on the endpoint (`POST /v1/train`, issue 37), kept where every instance sees them.

A classifier is a linear layer over the served model's L2-normalised embeddings, learnt online by passive-aggressive
updates (scikit-learn's `SGDClassifier(loss="hinge", penalty=None, learning_rate="pa1", eta0=1.0)`, what its
deprecated `PassiveAggressiveClassifier` now is; Jina's classifier learns the same way), so a later call updates it
with its new examples only. What is stored is data only, one JSON document per classifier (never a pickle): its labels,
weights, intercepts, the update counter scikit-learn keeps (`t`), how many examples it has seen, and `version`, which
grows by one with every accepted update (the order the store accepted them).

The store is named by one setting: a local directory (the default, for one instance or instances sharing a volume).
Classifiers live under `<store>/<served model name>/<id>.json`: a classifier is only meaningful on the embeddings it
was trained on, and the per-endpoint limit counts the classifiers of the served model.

Writes are conditional, so two instances updating one classifier never lose an update: a write names the version it
read (none: the classifier must not exist yet) and is refused if the stored version is another; the loser re-reads and
re-applies its examples (model_handlers/operations/train.py). Locally the check and the atomic rename run under an
exclusive lock file (`fcntl.flock`), and readers never lock: a rename replaces the whole document at once.
On S3 (`s3://bucket/prefix`) the store's own preconditions do it: `If-None-Match: *` creates, `If-Match` on the
ETag read updates (boto3 directly: fsspec's s3fs does not expose them). On Cloud Storage (`gs://bucket/prefix`)
`ifGenerationMatch=0` creates and `ifGenerationMatch` on the generation read updates; on Azure Blob
(`az://container/prefix`, adlfs's form) `overwrite=False` (If-None-Match: *) creates and `If-Match` on the ETag read
updates: each through the store's own client, since the fsspec layers do not expose these conditions either. Other
URLs are refused at start, naming what to set instead.

The per-endpoint limit holds across instances the same way: beside a model's classifiers, one document (`.claims`)
names the creations in progress. A creation first claims a place, written on the version of that document it read, and
counts the places taken as the stored classifiers and the claims still running, once per id; of two instances taking
the last place at once the store lets one write, and the other counts again with the winner's claim in. The claim is
dropped once its classifier is stored (or its call failed); one left by an instance that died expires after the
longest a call may take.

Readers (classify on any instance) keep what they read for at most `refresh_s` seconds: a newer version is answered
at most that long after the store accepted it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from model_handlers.classifiers import NAME, TrainedClassifier
from model_handlers.errors import HandlerError
from model_handlers.per_model import PerModel

FORMAT = 1
# The default store: a directory every worker process of one instance shares.
DEFAULT_LOCATION = os.path.join(tempfile.gettempdir(), "searchbox-classifiers")
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://")
# The document beside a model's classifiers naming the creations in progress (no .json suffix: never listed as one).
CLAIMS = ".claims"
# Conditional writes of the claims one call tries before it gives up: each loss means another call claimed or released.
CLAIM_ATTEMPTS = 64


@dataclass(frozen=True)
class Stored:
    """One trained classifier as stored: its state, and what /v1/models lists of it."""

    id: str
    labels: tuple[str, ...]  # sorted, as scikit-learn orders its classes_
    coef: np.ndarray  # float64 (labels, width), or (1, width) for two labels
    intercept: np.ndarray  # float64, one per row of coef
    t: float  # scikit-learn's update counter (t_)
    examples: int  # examples seen, all calls together
    version: int  # accepted updates: 1 once created
    updated_at: float  # seconds since the epoch, when the store accepted this version
    task: str | None  # the task its examples were embedded with
    model: str  # the served model it was trained on
    access: str = "private"

    @property
    def width(self) -> int:
        return int(self.coef.shape[1])

    def classifier(self) -> TrainedClassifier:
        """The linear layer classify scores with: a logistic of the one row for two labels, else a softmax of the rows
        (SGDClassifier predicts the label of the largest score, which is the best-scored label of either)."""
        return TrainedClassifier(name=self.id, labels=self.labels, weights=self.coef, bias=self.intercept,
                                 task=self.task, examples=self.examples, fit="passive-aggressive, online")

    def describe(self) -> dict[str, Any]:
        """What /v1/models lists of it."""
        return {"classifier_id": self.id, "labels": list(self.labels), "examples": self.examples,
                "version": self.version, "updated_at": _iso(self.updated_at), "access": self.access}

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "id": self.id, "labels": list(self.labels), "coef": self.coef.tolist(),
                "intercept": self.intercept.tolist(), "t": self.t, "examples": self.examples, "version": self.version,
                "updated_at": self.updated_at, "task": self.task, "model": self.model, "access": self.access}

    @classmethod
    def from_json(cls, value: Any, where: str) -> "Stored":
        try:
            if value.get("format") != FORMAT:
                raise ValueError(f"format must be {FORMAT}, not {value.get('format')!r}")
            stored = cls(id=str(value["id"]), labels=tuple(value["labels"]),
                         coef=np.asarray(value["coef"], dtype=np.float64),
                         intercept=np.asarray(value["intercept"], dtype=np.float64), t=float(value["t"]),
                         examples=int(value["examples"]), version=int(value["version"]),
                         updated_at=float(value["updated_at"]), task=value.get("task"), model=str(value["model"]),
                         access=str(value.get("access") or "private"))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise StoreError(f"{where} is not a stored classifier: {exc}") from None
        rows = 1 if len(stored.labels) == 2 else len(stored.labels)
        if (len(stored.coef.shape) != 2 or stored.coef.shape[0] != rows or stored.intercept.shape != (rows,)
                or not np.isfinite(stored.coef).all() or not np.isfinite(stored.intercept).all()):
            raise StoreError(f"{where}: needs a row of weights per label (one for two labels) and an intercept per row")
        return stored


class StoreError(HandlerError):
    """The classifier store cannot be read or written (unreadable document, no permission, unknown store)."""

    code = "CLASSIFIER_STORE"


class LocalStore:
    """Classifiers in a local directory (or a shared volume), one JSON document each, written by atomic rename under
    a lock file."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def _folder(self, model: str) -> Path:
        return self.root / _segment(model)

    def read(self, model: str, classifier_id: str) -> Stored | None:
        path = self._folder(model) / f"{classifier_id}.json"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read classifier {classifier_id} from {path}: {exc}") from None
        try:
            value = json.loads(data.decode("utf-8"))
        except ValueError as exc:  # not UTF-8 JSON (UnicodeDecodeError is a ValueError)
            raise StoreError(f"{path} is not JSON: {exc}") from None
        return Stored.from_json(value, str(path))

    def listed(self, model: str) -> list[Stored]:
        folder = self._folder(model)
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            stored = self.read(model, path.stem)
            if stored is not None:  # deleted between the listing and the read
                found.append(stored)
        return found

    def put(self, stored: Stored, expected: int | None) -> bool:
        """Write `stored` if the stored version is still `expected` (None: if there is none); whether it was."""
        folder = self._folder(stored.model)
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked(folder, stored.id):
            current = self.read(stored.model, stored.id)
            if (current.version if current is not None else None) != expected:
                return False
            handle, temporary = tempfile.mkstemp(prefix=f".{stored.id}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    # repr-exact floats: a reader computes with what was trained, to the last bit
                    json.dump(stored.to_json(), out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, folder / f"{stored.id}.json")
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            return True

    def delete(self, model: str, classifier_id: str) -> bool:
        folder = self._folder(model)
        if not folder.is_dir():
            return False
        with self._locked(folder, classifier_id):
            try:
                (folder / f"{classifier_id}.json").unlink()
            except FileNotFoundError:
                return False
        return True

    def read_claims(self, model: str) -> tuple[dict[str, float], Any]:
        """The model's creation claims (`Claims`) and the token a write of them is conditional on (None: none yet)."""
        path = self._folder(model) / CLAIMS
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return {}, None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from None
        value = _claims_from(data, str(path))
        return value, int(json.loads(data)["version"])

    def write_claims(self, model: str, claims: dict[str, float], token: Any) -> bool:
        """Write the claims if they are still the ones `token` names (None: if there are none); whether they were."""
        folder = self._folder(model)
        folder.mkdir(parents=True, exist_ok=True)
        with self._locked(folder, CLAIMS):
            if self.read_claims(model)[1] != token:
                return False
            handle, temporary = tempfile.mkstemp(prefix=f"{CLAIMS}.", suffix=".tmp", dir=folder)
            try:
                with os.fdopen(handle, "w", encoding="utf-8") as out:
                    json.dump({"format": FORMAT, "claims": claims, "version": (token or 0) + 1}, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(temporary, folder / CLAIMS)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
            return True

    class _Lock:
        def __init__(self, path: Path):
            self.path = path

        def __enter__(self):
            self.handle = open(self.path, "a+b")
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)

        def __exit__(self, *exc):
            fcntl.flock(self.handle.fileno(), fcntl.LOCK_UN)
            self.handle.close()

    def _locked(self, folder: Path, classifier_id: str) -> "LocalStore._Lock":
        return LocalStore._Lock(folder / f".{classifier_id}.lock")


class _ObjectStore:
    """What the three object stores share: the key layout, the JSON documents, and the token (ETag or generation) of
    each version this process read, which its conditional write names. A store supplies its client's four calls:
    `_get` (the document and its token, None when absent), `_put` (token None: only if absent; else only if still that
    token; False when the store refused), `_names` (the keys under a prefix) and `_delete` (False when absent); each
    raises StoreError naming the object on any other failure."""

    scheme = ""

    def __init__(self, url: str, what: str):
        self.root = url.rstrip("/")
        bucket, _, prefix = url.partition("://")[2].partition("/")
        if not bucket:
            raise StoreError(f"classifier store {url!r}: name a {what}, {self.scheme}://{what}/prefix")
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self._tokens: dict[tuple[str, str, int], Any] = {}
        self._lock = threading.Lock()
        self._client = None

    def _key(self, model: str, classifier_id: str = "") -> str:
        return _object_key(self.prefix, model, classifier_id)

    def _where(self, key: str) -> str:
        return f"{self.scheme}://{self.bucket}/{key}"

    def read(self, model: str, classifier_id: str) -> Stored | None:
        key = self._key(model, classifier_id)
        got = self._get(key)
        if got is None:
            return None
        data, token = got
        try:
            stored = Stored.from_json(json.loads(data.decode("utf-8")), self._where(key))
        except ValueError as exc:
            raise StoreError(f"{self._where(key)} is not JSON: {exc}") from None
        with self._lock:
            self._tokens[(model, classifier_id, stored.version)] = token
            if len(self._tokens) > 4096:
                self._tokens.clear()
        return stored

    def listed(self, model: str) -> list[Stored]:
        ids = [name.rpartition("/")[2].removesuffix(".json") for name in self._names(self._key(model))
               if name.endswith(".json")]
        return [stored for stored in (self.read(model, classifier_id) for classifier_id in sorted(ids))
                if stored is not None]

    def put(self, stored: Stored, expected: int | None) -> bool:
        token = None
        if expected is not None:
            with self._lock:
                token = self._tokens.get((stored.model, stored.id, expected))
            if token is None:  # not read by this process at that version: read it, and let the caller re-apply
                return False
        return self._put(self._key(stored.model, stored.id), json.dumps(stored.to_json()).encode("utf-8"), token)

    def read_claims(self, model: str) -> tuple[dict[str, float], Any]:
        key = self._key(model) + CLAIMS
        got = self._get(key)
        return ({}, None) if got is None else (_claims_from(got[0], self._where(key)), got[1])

    def write_claims(self, model: str, claims: dict[str, float], token: Any) -> bool:
        return self._put(self._key(model) + CLAIMS, _claims_document(claims), token)

    def delete(self, model: str, classifier_id: str) -> bool:
        return self._delete(self._key(model, classifier_id))


class S3Store(_ObjectStore):
    """Classifiers under an S3 prefix (`s3://bucket/prefix`), written with S3's own preconditions: a new classifier
    with `If-None-Match: *`, an update with `If-Match` on the ETag of the version it read, so S3 itself refuses the
    write of the loser of a race (412, or 409 for writes at the same instant). Credentials, region and endpoint are
    boto3's own (its environment variables, the instance's role; AWS_ENDPOINT_URL for an emulator)."""

    scheme = "s3"

    def __init__(self, url: str):
        super().__init__(url, "bucket")

    @property
    def client(self):
        if self._client is None:
            try:
                import boto3
            except ImportError:
                raise StoreError("an s3:// classifier store needs boto3: install searchbox[s3]") from None
            self._client = boto3.client("s3")
        return self._client

    def _get(self, key: str) -> tuple[bytes, Any] | None:
        def document() -> tuple[bytes, Any]:
            answer = self.client.get_object(Bucket=self.bucket, Key=key)
            return answer["Body"].read(), answer["ETag"]  # one request: the document and its ETag are one version's

        return self._read(key, document)

    def _read(self, key: str, call: Callable[[], Any]) -> Any:
        """What `call` answers about the object at `key`, or None when there is none."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call()
        except ClientError as exc:
            if _missing(exc):
                return None
            raise StoreError(f"cannot read {self._where(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"cannot read {self._where(key)}: {exc}") from None

    def _put(self, key: str, body: bytes, token: Any) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        condition = {"IfNoneMatch": "*"} if token is None else {"IfMatch": token}
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/json", **condition)
        except ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = exc.response.get("Error", {}).get("Code")
            if status in (409, 412) or code in ("PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey"):
                return False
            raise StoreError(f"cannot write {self._where(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise StoreError(f"cannot write {self._where(key)}: {exc}") from None
        return True

    def _names(self, prefix: str) -> list[str]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
            return [item["Key"] for page in pages for item in page.get("Contents", [])]
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"cannot list {self._where(prefix)}: {exc}") from None

    def _delete(self, key: str) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        # S3 answers a delete of nothing with success: ask first, for the headers alone
        if self._read(key, lambda: self.client.head_object(Bucket=self.bucket, Key=key)) is None:
            return False
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except (BotoCoreError, ClientError) as exc:
            raise StoreError(f"cannot delete {self._where(key)}: {exc}") from None
        return True


def _missing(exc) -> bool:
    """A botocore ClientError of an object that is not there: GetObject's NoSuchKey, HeadObject's bare 404 (a HEAD
    answer has no body to name the error in)."""
    return exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404")


class GCSStore(_ObjectStore):
    """Classifiers under a Cloud Storage prefix (`gs://bucket/prefix`), written with Cloud Storage's own preconditions:
    a new classifier with `ifGenerationMatch=0` (only if no object exists), an update with `ifGenerationMatch` on the
    generation of the version it read, so Cloud Storage refuses the loser's write (412). Credentials and project are
    the client's own (the instance's service account; STORAGE_EMULATOR_HOST for an emulator)."""

    scheme = "gs"

    def __init__(self, url: str):
        super().__init__(url, "bucket")

    def _modules(self):
        try:
            import warnings

            with warnings.catch_warnings():
                # google.api_core's notice that it will drop this Python some day: not the operator's concern
                warnings.simplefilter("ignore", FutureWarning)
                from google.api_core import exceptions
                from google.auth import exceptions as auth_exceptions
                from google.cloud import storage
        except ImportError:
            raise StoreError("a gs:// classifier store needs google-cloud-storage: install searchbox[vertex]") from None
        return storage, exceptions, auth_exceptions

    @property
    def client(self):
        if self._client is None:
            storage, _, auth_exceptions = self._modules()
            try:
                self._client = storage.Client()
            except auth_exceptions.GoogleAuthError as exc:
                raise StoreError(f"cannot open {self.root}: {exc}") from None
        return self._client

    def _get(self, key: str) -> tuple[bytes, Any] | None:
        _, exceptions, auth_exceptions = self._modules()
        for _ in range(8):
            try:
                blob = self.client.bucket(self.bucket).get_blob(key)
                if blob is None:
                    return None
                # the generation the metadata named, so the document and the generation kept are one version's (taken
                # first: the download resets it from its response headers, which an emulator may not send)
                generation = int(blob.generation)
                return blob.download_as_bytes(if_generation_match=generation), generation
            except (exceptions.NotFound, exceptions.PreconditionFailed):
                continue  # replaced or deleted between the two requests: read again
            except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
                raise StoreError(f"cannot read {self._where(key)}: {exc}") from None
        raise StoreError(f"cannot read {self._where(key)}: it kept changing while read")

    def _put(self, key: str, body: bytes, token: Any) -> bool:
        _, exceptions, auth_exceptions = self._modules()
        try:
            self.client.bucket(self.bucket).blob(key).upload_from_string(
                body, content_type="application/json", if_generation_match=0 if token is None else token)
        except (exceptions.PreconditionFailed, exceptions.NotFound):
            return False
        except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
            raise StoreError(f"cannot write {self._where(key)}: {exc}") from None
        return True

    def _names(self, prefix: str) -> list[str]:
        _, exceptions, auth_exceptions = self._modules()
        try:
            return [blob.name for blob in self.client.list_blobs(self.bucket, prefix=prefix)]
        except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
            raise StoreError(f"cannot list {self._where(prefix)}: {exc}") from None

    def _delete(self, key: str) -> bool:
        _, exceptions, auth_exceptions = self._modules()
        try:
            self.client.bucket(self.bucket).blob(key).delete()
        except exceptions.NotFound:
            return False
        except (exceptions.GoogleAPIError, auth_exceptions.GoogleAuthError) as exc:
            raise StoreError(f"cannot delete {self._where(key)}: {exc}") from None
        return True


_OPENED: dict[str, Any] = {}
_OPENED_LOCK = threading.Lock()


class AzureBlobStore(_ObjectStore):
    """Classifiers under an Azure Blob Storage prefix (`az://container/prefix`, adlfs's form: the container first, the
    account from the environment), written with the service's own ETag conditions: a new classifier with
    `If-None-Match: *` (`overwrite=False`), an update with `If-Match` on the ETag of the version it read
    (`MatchConditions.IfNotModified`), so Azure refuses the loser's write (409 or 412). The account: the connection
    string AZURE_STORAGE_CONNECTION_STRING (an emulator's, or a key's), else AZURE_STORAGE_ACCOUNT_NAME with the
    instance's managed identity (azure-identity's DefaultAzureCredential; the role Storage Blob Data Contributor)."""

    scheme = "az"

    def __init__(self, url: str):
        super().__init__(url, "container")
        if not (os.environ.get("AZURE_STORAGE_CONNECTION_STRING") or os.environ.get("AZURE_STORAGE_ACCOUNT_NAME")):
            raise StoreError(f"classifier store {url!r}: set AZURE_STORAGE_CONNECTION_STRING, or "
                             "AZURE_STORAGE_ACCOUNT_NAME with a managed identity, to name the storage account")

    @staticmethod
    def _modules():
        try:
            from azure.core import MatchConditions, exceptions
            from azure.storage.blob import BlobServiceClient
        except ImportError:
            raise StoreError("an az:// classifier store needs azure-storage-blob: install searchbox[azureblob]") \
                from None
        return BlobServiceClient, MatchConditions, exceptions

    @property
    def client(self):
        if self._client is None:
            service, _, exceptions = self._modules()
            connection = os.environ.get("AZURE_STORAGE_CONNECTION_STRING")
            try:
                if connection:
                    client = service.from_connection_string(connection)
                else:
                    from azure.identity import DefaultAzureCredential

                    account = os.environ["AZURE_STORAGE_ACCOUNT_NAME"]
                    client = service(f"https://{account}.blob.core.windows.net", credential=DefaultAzureCredential())
            except (ImportError, ValueError, exceptions.AzureError) as exc:
                raise StoreError(f"cannot open {self.root}: {exc}") from None
            self._client = client.get_container_client(self.bucket)
        return self._client

    def _get(self, key: str) -> tuple[bytes, Any] | None:
        _, _, exceptions = self._modules()
        try:
            downloaded = self.client.download_blob(key)  # one request: the document and its ETag are one version's
            return downloaded.readall(), downloaded.properties.etag
        except exceptions.ResourceNotFoundError:
            return None
        except exceptions.AzureError as exc:
            raise StoreError(f"cannot read {self._where(key)}: {exc}") from None

    def _put(self, key: str, body: bytes, token: Any) -> bool:
        from azure.storage.blob import ContentSettings

        _, conditions, exceptions = self._modules()
        condition: dict[str, Any] = ({"overwrite": False} if token is None else
                                     {"overwrite": True, "etag": token, "match_condition": conditions.IfNotModified})
        try:
            self.client.upload_blob(key, body, content_settings=ContentSettings(content_type="application/json"),
                                    **condition)
        except (exceptions.ResourceExistsError, exceptions.ResourceModifiedError, exceptions.ResourceNotFoundError):
            return False
        except exceptions.AzureError as exc:
            raise StoreError(f"cannot write {self._where(key)}: {exc}") from None
        return True

    def _names(self, prefix: str) -> list[str]:
        _, _, exceptions = self._modules()
        try:
            return [blob.name for blob in self.client.list_blobs(name_starts_with=prefix)]
        except exceptions.AzureError as exc:
            raise StoreError(f"cannot list {self._where(prefix)}: {exc}") from None

    def _delete(self, key: str) -> bool:
        _, _, exceptions = self._modules()
        try:
            self.client.delete_blob(key)
        except exceptions.ResourceNotFoundError:
            return False
        except exceptions.AzureError as exc:
            raise StoreError(f"cannot delete {self._where(key)}: {exc}") from None
        return True


_OBJECT_STORES: dict[str, Any] = {"s3": S3Store, "gs": GCSStore, "az": AzureBlobStore}


def opened(location: str | None) -> Any:
    """The store a setting names (None: the default directory); one per location in a process.

    Raises:
        StoreError: a URL of a store not served, naming what to set instead.
    """
    location = location or DEFAULT_LOCATION
    kind = _OBJECT_STORES.get(location.partition("://")[0] if "://" in location else "")
    if kind is not None:
        with _OPENED_LOCK:
            if location not in _OPENED:
                _OPENED[location] = kind(location)
            return _OPENED[location]
    if _URL.match(location) and not location.startswith("file://"):
        raise StoreError(f"classifier store {location!r}: of the object stores only s3://, gs:// and az:// are "
                         "served; set one of them, a local directory, or a volume every instance mounts")
    return LocalStore(Path(location.removeprefix("file://")))


class Readers:
    """What classify reads, kept per classifier for at most `refresh_s` seconds (the bound on how stale an answer
    may be once the store accepted a newer version). Safe across request threads."""

    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, str], tuple[float, Stored | None]] = {}
        self._lock = threading.Lock()

    def read(self, store: LocalStore, model: str, classifier_id: str, refresh_s: float) -> Stored | None:
        key = (str(store.root), model, classifier_id)
        now = time.monotonic()
        with self._lock:
            kept = self._kept.get(key)
        if kept is not None and now - kept[0] < refresh_s:
            return kept[1]
        stored = store.read(model, classifier_id)
        with self._lock:
            self._kept[key] = (now, stored)
            if len(self._kept) > 4096:  # bounded: drop the oldest reads
                for old in sorted(self._kept, key=lambda k: self._kept[k][0])[:1024]:
                    del self._kept[old]
        return stored

    def forget(self, store: LocalStore, model: str, classifier_id: str) -> None:
        with self._lock:
            self._kept.pop((str(store.root), model, classifier_id), None)


# One reader per loaded model (each worker process, each instance served in one process), gone with it.
readers = PerModel(Readers)

# What `remove` did.
DELETED, ABSENT, SHIPPED = "deleted", "absent", "shipped"


def remove(options: Any, model: str, shipped: Any, classifier_id: str, reader: Readers | None = None) -> str:
    """Delete a trained classifier from the store (`shipped`: the artifact's classifiers, which stay); `reader`: this
    instance's, which forgets it at once (other instances within their refresh bound)."""
    if classifier_id in shipped and not options.overwrite_artifact_classifiers:
        return SHIPPED
    if not valid_id(classifier_id):
        return ABSENT
    store = opened(options.classifier_store)
    deleted = store.delete(model, classifier_id)
    release(store, model, classifier_id)
    if reader is not None:
        reader.forget(store, model, classifier_id)
    return DELETED if deleted else ABSENT


def claim(store: Any, model: str, classifier_id: str, limit: int, hold_s: float) -> bool | None:
    """Take a place among the model's `limit` for `classifier_id`, about to be created: True if taken, False if every
    place is (the stored classifiers and the claims younger than `hold_s`, once per id), None if other calls kept
    winning the write. The claims are read before the classifiers are listed: a claim dropped after that read had
    its classifier stored before, so the listing has it."""
    for _ in range(CLAIM_ATTEMPTS):
        claims, token = store.read_claims(model)
        now = time.time()
        running = {held: at for held, at in claims.items() if now - at < hold_s}
        if len(running.keys() | {stored.id for stored in store.listed(model)}) >= limit:
            return False
        if store.write_claims(model, {**running, classifier_id: now}, token):
            return True
    return None


def release(store: Any, model: str, classifier_id: str) -> None:
    """Drop the claim of `classifier_id`, if any (its classifier stored, its creation failed, or it was deleted). If
    other calls keep winning the write, it is left to expire."""
    for _ in range(CLAIM_ATTEMPTS):
        claims, token = store.read_claims(model)
        if classifier_id not in claims:
            return
        if store.write_claims(model, {held: at for held, at in claims.items() if held != classifier_id}, token):
            return


def _claims_document(claims: dict[str, float]) -> bytes:
    """The claims as stored, with a value of their own: S3's ETag is the MD5 of the content, so a document written back
    as it was (every claim released) would carry the ETag read before the writes in between, and a conditional write
    naming that ETag would pass over them (two creations counted against one listing: one over the limit, seen on
    moto's S3)."""
    return json.dumps({"format": FORMAT, "claims": claims, "written": uuid.uuid4().hex}).encode("utf-8")


def _claims_from(data: bytes, where: str) -> dict[str, float]:
    try:
        value = json.loads(data.decode("utf-8"))
        if value.get("format") != FORMAT:
            raise ValueError(f"format must be {FORMAT}, not {value.get('format')!r}")
        return {str(held): float(at) for held, at in value["claims"].items()}
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{where} is not a classifier store's claims: {exc}") from None


def valid_id(classifier_id: str) -> bool:
    return bool(NAME.fullmatch(classifier_id))


def _object_key(prefix: str, model: str, classifier_id: str = "") -> str:
    """An object store's key of a classifier's document under `prefix`, or (no id) the model's folder, with its
    trailing slash: the same layout in every bucket and container."""
    name = f"{classifier_id}.json" if classifier_id else ""
    return "/".join(part for part in (prefix, _segment(model), name) if part) + ("" if name else "/")


def _segment(model: str) -> str:
    """A model name as one path segment."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", model) or "_"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))

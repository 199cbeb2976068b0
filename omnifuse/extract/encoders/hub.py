"""Loading from the Hugging Face hub: one quick check first, so an offline machine gets one line.

Without it, transformers asks the hub for every file of a model it does not have locally and retries each
request with back-off: offline, ``bert-base-uncased`` took 29 s of doubled warnings before an error that
names none of the choices that work offline. ``hub_load(name, source, family, from_pretrained)`` instead:

1. loads a local folder as it is (no network), and leaves a name that cannot be a hub id (a path that does
   not exist) to transformers, which refuses it without the network;
2. loads a model whose ``config.json`` is in the local Hugging Face cache from there
   (``local_files_only=True``: no network, whatever the connection);
3. refuses at once when offline mode is set (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``);
4. otherwise sends one ``HEAD`` request to the hub endpoint (``HF_ENDPOINT``, default
   ``https://huggingface.co``; proxies from the environment apply) with a :data:`HUB_TIMEOUT_S` timeout, once
   per process, and refuses when no answer comes;
5. and only then lets transformers download.

The refusal is a :class:`HubUnreachableError` (a ``ValueError``: ``omnifuse extract`` prints it as one
``error:`` line) naming the encoder and :data:`OFFLINE_CHOICES`.

Single weight files go the same way: ``hub_file`` (one file of a hub repository, e.g. open_clip's
``open_clip_pytorch_model.bin``) and ``url_file`` (a file at a plain URL, e.g. torchxrayvision's GitHub
release, kept where torchxrayvision itself keeps it). A gated repository the user has not been granted
(``GatedRepoError``) is refused in one line that says how to obtain access (``access``).
"""

from __future__ import annotations

import functools
import os
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import GatedRepoError
from huggingface_hub.utils import validate_repo_id

T = TypeVar("T")

HUB_TIMEOUT_S = 3.0
"""Seconds the reachability check waits for the hub's answer."""

OFFLINE_CHOICES = (
    "--text-encoder minilm (the bundled offline MiniLM), --image-encoder random:resnet34 (seeded random "
    "weights, no download), or a local model folder (--text-encoder PATH, --image-encoder PATH)"
)
"""The encoders that build without the hub, as the refusal names them."""

_TRUE = {"1", "true", "yes", "on", "y", "t"}

CacheState = Literal["cached", "absent", "unknown"]


class HubUnreachableError(ValueError):
    """A hub model is needed, it is not in the local cache, and the hub cannot be reached (or offline mode is
    set). The message is one line naming the encoder and the offline choices."""


def offline_requested() -> bool:
    """Whether offline mode is set: ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` true now (read at each
    call, not when huggingface_hub was imported), or huggingface_hub's own flag."""
    env = (os.environ.get(k, "").strip().lower() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return any(v in _TRUE for v in env) or bool(constants.HF_HUB_OFFLINE)


def hub_endpoint() -> str:
    """The hub's address: ``HF_ENDPOINT`` when set, else huggingface_hub's (``https://huggingface.co``)."""
    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


@functools.lru_cache(maxsize=8)
def hub_reachable(endpoint: str, timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether ``endpoint`` answers one ``HEAD`` request within ``timeout`` seconds (any HTTP status counts as
    an answer). Cached per process: a run checks once."""
    request = urllib.request.Request(endpoint, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):  # noqa: S310 - the hub's https endpoint
            return True
    except urllib.error.HTTPError:
        return True  # the hub answered (403, 404...): it is reachable
    except (urllib.error.URLError, OSError, ValueError):  # no route, DNS, timeout, refused, a bad HF_ENDPOINT
        return False


def cache_state(repo_id: str, filename: str = "config.json") -> CacheState:
    """Whether ``filename`` of the hub model ``repo_id`` is in the local Hugging Face cache (``cached``), known
    not to exist there (``absent``: the hub said so before), or neither (``unknown``)."""
    try:
        found = try_to_load_from_cache(repo_id, filename)
    except Exception:  # noqa: BLE001 - an id the hub would refuse (HFValidationError...): not cached
        return "unknown"
    if isinstance(found, str):
        return "cached"
    return "unknown" if found is None else "absent"


def _refusal(name: str, family: str, why: str) -> HubUnreachableError:
    cache = os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE
    return HubUnreachableError(
        f"{family} encoder {name!r} is not in the local Hugging Face cache ({cache}) and {why}; "
        f"offline choices: {OFFLINE_CHOICES}"
    )


def require_hub(name: str, family: str) -> None:
    """Raise :class:`HubUnreachableError` when offline mode is set or the hub does not answer in time."""
    if offline_requested():
        raise _refusal(name, family, "offline mode is set (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE)")
    endpoint = hub_endpoint()
    if not hub_reachable(endpoint):
        raise _refusal(name, family, f"the hub ({endpoint}) did not answer within {HUB_TIMEOUT_S:g} s")


def is_local(source: str) -> bool:
    """Whether ``source`` names a folder or file on this machine (then nothing is downloaded)."""
    return Path(source).expanduser().exists()


def is_repo_id(source: str) -> bool:
    """Whether ``source`` can be a hub model id (``name`` or ``org/name``); a path such as ``/data/model`` or
    ``./model`` that does not exist is not one, and transformers refuses it without the network."""
    try:
        validate_repo_id(source)
    except Exception:  # noqa: BLE001 - HFValidationError, or a value that is not a string
        return False
    return True


def hub_load(
    name: str, source: str, family: str, from_pretrained: Callable[..., T], filename: str = "config.json"
) -> T:
    """``from_pretrained(source)`` (``AutoModel``'s, ``AutoTokenizer``'s...) without transformers' retry loop
    when the hub cannot be reached: see the module docstring. ``filename``: the file whose presence in the
    local cache means the model was downloaded before. ``name``: the encoder, for the message."""
    if is_local(source) or not is_repo_id(source):
        return from_pretrained(source)
    if cache_state(source, filename) == "cached":
        try:
            return from_pretrained(source, local_files_only=True)
        except OSError:  # some files of the model are not in the cache: the hub has to give them
            pass
    require_hub(name, family)
    return from_pretrained(source)


def is_gated_error(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) says a gated hub repository refused this user: a
    ``GatedRepoError``, or transformers' ``OSError`` that wraps one."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, GatedRepoError) or "gated repo" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def gated_refusal(name: str, family: str, source: str, access: str) -> ValueError:
    """The one-line refusal for a gated model this machine has no access to."""
    return ValueError(
        f"{family} encoder {name!r} ({source}) is gated on the Hugging Face hub and this machine has "
        f"no access: {access}"
    )


def hub_file(name: str, repo_id: str, filename: str, family: str, access: str = "") -> str:
    """The local path of ``filename`` in the hub repository ``repo_id``: from the local Hugging Face cache
    without the network when it is there, else downloaded after the quick reachability check of ``hub_load``.
    ``access``: how to obtain access, for a gated repository. Errors are one-line ``ValueError``s."""
    if cache_state(repo_id, filename) == "cached":
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    require_hub(name, family)
    try:
        return str(hf_hub_download(repo_id, filename))
    except Exception as e:  # noqa: BLE001 - gated, missing file, network: one line naming the file
        if access and is_gated_error(e):
            raise gated_refusal(name, family, repo_id, access) from e
        raise ValueError(
            f"{family} encoder {name!r}: cannot download {filename} from {repo_id} ({type(e).__name__}: {e})"
        ) from e


URL_TIMEOUT_S = 30.0
"""Seconds ``url_file`` waits for a server to answer."""


def url_file(name: str, url: str, dest: str | Path, family: str) -> Path:
    """``dest`` when it exists; else the file at ``url`` downloaded there (through ``dest.part``, renamed once
    complete). Offline mode or an unreachable server: a one-line ``ValueError`` naming the URL and where to
    put the file by hand."""
    dest = Path(dest).expanduser()
    if dest.is_file():
        return dest
    hint = f"download {url} and put it at {dest}"
    if offline_requested():
        raise ValueError(f"{family} encoder {name!r}: {dest} is missing and offline mode is set; {hint}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_S) as r, open(part, "wb") as f:  # noqa: S310
            while chunk := r.read(1 << 20):
                f.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        part.unlink(missing_ok=True)
        raise ValueError(f"{family} encoder {name!r}: cannot download its weights ({type(e).__name__}); {hint}") from e
    part.replace(dest)
    return dest

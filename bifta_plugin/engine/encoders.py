"""open_clip glue: device/precision choice, the CLIP encoder, a text cache.

:func:`create_encoder` loads any open_clip model (``"ViT-B-32"`` +
``"openai"``, ``"hf-hub:org/repo"``, ``"local-dir:/path"``, or a model name
plus a local checkpoint file as ``pretrained``) and wraps it in a
:class:`ClipEncoder`:

- images go through the model's **own** eval transform (``preprocess``);
  for the OpenAI ViTs that is the reference's ``P(.)`` (``docs/METHOD.md`` §2);
- every output is L2-normalised float32, whatever the precision;
- on GPU, "auto" precision is fp16 (the reference runs CLIP in fp16); we
  keep fp32 weights and run the towers under autocast, so layer norms and
  softmaxes stay fp32. CPU always runs fp32;
- text embeddings are cached in memory and on disk, keyed by the weights'
  identity and the precision, so a re-run encodes no text at all.

Importing this module is cheap: open_clip (and torchvision through it) is
imported inside the functions that need it.

Example:
    >>> encoder = create_encoder("ViT-B-32", "openai", device="auto")
    >>> text_features = encoder.encode_texts(["a photo of a cat."])
    >>> pixels = encoder.preprocess(pil_image).unsqueeze(0)
    >>> image_features = encoder.encode_images(pixels)
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import logging
import os
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from ..core import defaults
from . import text_tower

logger = logging.getLogger(__name__)

SCHEMA_PREFIXES = ("hf-hub:", "local-dir:")
CACHE_DIR_ENV = "BIFTA_CACHE_DIR"

_AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# Checkpoint formats that cannot run code when loaded (no pickle inside).
_SAFE_SUFFIXES = (".safetensors", ".npz", ".npy")
_CHECKPOINT_GLOBS = ("*.bin", "*.pth", "*.pt", "*.ckpt")


# ---------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """Turn a device request into an available :class:`torch.device`.

    Args:
        device: "auto" (or None) picks ``cuda`` if available, else ``mps``,
            else ``cpu``; or one of "cpu", "cuda", "cuda:N", "mps", or a
            :class:`torch.device`.

    Returns:
        The device, with an explicit index for CUDA.

    Raises:
        ValueError: the string is not a device, or the device is absent.
    """
    if device is None or (
        isinstance(device, str) and device.strip().lower() == "auto"
    ):
        return _auto_device()
    if isinstance(device, str):
        try:
            device = torch.device(device.strip().lower())
        except RuntimeError:
            raise ValueError(
                f"unknown device {device!r}; use 'auto', 'cpu', 'cuda', "
                "'cuda:N' or 'mps'"
            ) from None
    if not isinstance(device, torch.device):
        raise ValueError(
            f"device must be a string or torch.device; got {device!r}"
        )
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type == "cuda":
        return _check_cuda(device)
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(
                "MPS requested but torch.backends.mps.is_available() is False"
            )
        return torch.device("mps")
    raise ValueError(
        f"unsupported device type {device.type!r}; use 'auto', 'cpu', "
        "'cuda', 'cuda:N' or 'mps'"
    )


def _auto_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _check_cuda(device: torch.device) -> torch.device:
    if not torch.cuda.is_available():
        raise ValueError(
            f"CUDA requested ({str(device)!r}) but torch.cuda.is_available() "
            "is False; use device='cpu' or 'auto'"
        )
    count = torch.cuda.device_count()
    index = device.index
    if index is None:
        index = torch.cuda.current_device()
    if index >= count:
        raise ValueError(
            f"cuda:{index} requested but only {count} CUDA device(s) are "
            "visible"
        )
    return torch.device("cuda", index)


def resolve_precision(precision: str, device: torch.device) -> str:
    """Pick the compute precision for ``device``.

    Args:
        precision: "auto", "fp32", "fp16" or "bf16". "auto" is fp16 on
            CUDA (the reference runs CLIP in fp16 on GPU) and fp32 elsewhere.
        device: the device the model runs on.

    Returns:
        "fp32", "fp16" or "bf16".

    Raises:
        ValueError: unknown precision, or a half precision on CPU.
    """
    name = precision.strip().lower() if isinstance(precision, str) else None
    if name not in defaults.PRECISIONS:
        raise ValueError(
            f"unknown precision {precision!r}; use one of {list(defaults.PRECISIONS)}"
        )
    device = torch.device(device)
    if name == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if name != "fp32" and device.type == "cpu":
        raise ValueError(
            f"precision {name!r} needs a GPU; CPU runs in 'fp32' "
            "(or use precision='auto')"
        )
    if (
        name == "bf16"
        and device.type == "cuda"
        and not torch.cuda.is_bf16_supported()
    ):
        raise ValueError(f"bf16 is not supported on {device}; use 'fp16'")
    return name


# ---------------------------------------------------------------------------
# Weights: what to load, and a stable identity for caches
# ---------------------------------------------------------------------------


def is_random_weights(model_name: str, pretrained: Any) -> bool:
    """True when ``pretrained`` asks for random weights (None/"none"/...).

    ``hf-hub:`` and ``local-dir:`` names carry their own weights, so they
    are never random.
    """
    if str(model_name).startswith(SCHEMA_PREFIXES):
        return False
    if pretrained is None:
        return True
    return isinstance(pretrained, str) and (
        pretrained.strip().lower() in defaults.RANDOM_PRETRAINED
    )


def weights_identity(model_name: str, pretrained: str | None) -> str:
    """A string that names the weights, for cache keys.

    - a pretrained tag: model name + tag;
    - a checkpoint file: model name + absolute path + size + mtime, so an
      overwritten file gets a new identity;
    - ``local-dir:``: the directory plus size/mtime of its files;
    - ``hf-hub:``: the repo name (the Hub revision is not known here);
    - random weights: a fresh token per call, so two random models never
      share a cache entry.
    """
    if is_random_weights(model_name, pretrained):
        return f"open_clip:{model_name}:random:{uuid.uuid4().hex}"
    if model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :]).expanduser().resolve()
        files = sorted(p for p in folder.iterdir() if p.is_file())
        stats = ",".join(_file_stamp(p) for p in files)
        return f"open_clip:local-dir:{folder}:{stats}"
    if model_name.startswith("hf-hub:"):
        return f"open_clip:{model_name}"
    pretrained = os.fspath(pretrained)
    path = Path(pretrained).expanduser()
    # open_clip resolves a known tag before a file of the same name.
    if _is_known_tag(model_name, pretrained) or not path.is_file():
        return f"open_clip:{model_name}:{pretrained}"
    return f"open_clip:{model_name}:file:{_file_stamp(path.resolve())}"


def _file_stamp(path: Path) -> str:
    stat = path.stat()
    return f"{path}|size={stat.st_size}|mtime_ns={stat.st_mtime_ns}"


def _is_known_tag(model_name: str, pretrained: str) -> bool:
    import open_clip

    return bool(open_clip.get_pretrained_cfg(model_name, pretrained))


def _check_model_name(model_name: str) -> str:
    """Validate a model name; returns it with OpenAI's "/" spelt "-"."""
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(
            f"model_name must be a non-empty string; got {model_name!r}. "
            "See open_clip.list_models() for valid names."
        )
    model_name = model_name.strip()
    if model_name.startswith(SCHEMA_PREFIXES):
        return model_name
    import open_clip

    # open_clip itself accepts "ViT-B/32" for "ViT-B-32".
    cleaned = model_name.replace("/", "-")
    known = open_clip.list_models()
    if cleaned not in known:
        close = difflib.get_close_matches(cleaned, known, n=5)
        hint = f" Close matches: {close}." if close else ""
        raise ValueError(
            f"unknown open_clip model {model_name!r}.{hint} See "
            f"open_clip.list_models() for all {len(known)} names, or use "
            "'hf-hub:org/repo' / 'local-dir:/path'."
        )
    return cleaned


def _check_pretrained(model_name: str, pretrained: Any) -> str | None:
    """Normalise ``pretrained``: None (random or schema), a tag, or a path.

    Raises:
        RuntimeError: neither a known tag nor an existing file.
    """
    if is_random_weights(model_name, pretrained):
        return None
    if model_name.startswith(SCHEMA_PREFIXES):
        if pretrained is not None and str(pretrained).strip():
            logger.warning(
                "pretrained=%r is ignored: %r names its own weights",
                pretrained,
                model_name,
            )
        return None
    if not isinstance(pretrained, (str, os.PathLike)):
        raise ValueError(
            "pretrained must be a tag, a checkpoint path or None; got "
            f"{pretrained!r}"
        )
    pretrained = os.fspath(pretrained).strip()
    if _is_known_tag(model_name, pretrained):
        return pretrained
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path.resolve())
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(model_name)
    raise RuntimeError(
        f"cannot load open_clip model {model_name!r} with pretrained="
        f"{pretrained!r}: it is neither a known pretrained tag for this "
        f"model (known: {tags}) nor an existing checkpoint file. Use "
        "pretrained=None for random weights."
    )


def _check_checkpoint_is_weights_only(path: Path) -> None:
    """Refuse checkpoints that need arbitrary unpickling.

    open_clip 3.3 already loads with ``torch.load(weights_only=True)``, but
    its ``load_state_dict`` retries *without* weights_only on a TypeError,
    which a crafted pickle can trigger (e.g. ``OrderedDict(1, 2, 3)``, an
    allowed global called with bad arguments). Loading once here, strictly,
    means open_clip's own load can no longer reach that fallback.
    """
    if path.suffix in _SAFE_SUFFIXES:
        return
    try:
        # mmap (zip checkpoints only) avoids reading the tensors into RAM.
        torch.load(
            path,
            map_location="cpu",
            weights_only=True,
            mmap=zipfile.is_zipfile(path),
        )
    except Exception as err:
        raise RuntimeError(
            f"checkpoint {str(path)!r} cannot be loaded with "
            f"torch.load(weights_only=True): {err}"
        ) from err


def _check_local_checkpoints(model_name: str, pretrained: str | None) -> None:
    if pretrained is not None:
        # Same order as open_clip: a known tag wins over a file of that name.
        if os.path.isfile(pretrained) and not _is_known_tag(
            model_name, pretrained
        ):
            _check_checkpoint_is_weights_only(Path(pretrained))
    elif model_name.startswith("local-dir:"):
        folder = Path(model_name[len("local-dir:") :]).expanduser()
        for pattern in _CHECKPOINT_GLOBS:
            for path in sorted(folder.glob(pattern)):
                _check_checkpoint_is_weights_only(path)


def _load_open_clip(
    model_name: str, pretrained: str | None, device: torch.device
) -> tuple[torch.nn.Module, Callable, Callable]:
    """open_clip's (model, eval transform, tokenizer).

    Raises:
        RuntimeError: naming model, tag and open_clip's reason.
    """
    import open_clip

    random = is_random_weights(model_name, pretrained)
    try:
        _check_local_checkpoints(model_name, pretrained)
        model, _, preprocess = open_clip.create_model_and_transforms(
            model_name,
            pretrained=pretrained,
            device=device,
            precision="fp32",  # half precision comes from autocast
            weights_only=True,
            # open_clip only logs when hf-hub weights fail; we raise.
            require_pretrained=not random,
        )
        tokenizer = open_clip.get_tokenizer(model_name)
    except Exception as err:
        raise RuntimeError(
            f"could not load open_clip model {model_name!r} with pretrained="
            f"{pretrained!r}: {err}"
        ) from err
    return model, preprocess, tokenizer


# ---------------------------------------------------------------------------
# Text cache on disk
# ---------------------------------------------------------------------------


def default_text_cache_dir() -> Path:
    """``$BIFTA_CACHE_DIR/text``, else ``~/.cache/bifta/text``."""
    root = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "bifta"
    return Path(root).expanduser() / "text"


class _TextCacheFile:
    """One ``.pt`` file of text features for one (identity, precision).

    Holds ``{"identity": str, "texts": list[str], "features": Tensor[N, D]
    float32}``. It is a cache, not data: a file that cannot be read is
    logged and ignored (then overwritten), never fatal.
    """

    def __init__(self, directory: Path, key: str, embed_dim: int):
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
        self.path = Path(directory) / f"{digest}.pt"
        self.key = key
        self.embed_dim = embed_dim
        self._seen_stamp: tuple[int, int] | None = None

    def _stamp(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def read_if_changed(self) -> dict[str, Tensor]:
        """Entries on disk, or {} when unchanged since the last read/write."""
        stamp = self._stamp()
        if stamp is None or stamp == self._seen_stamp:
            return {}
        self._seen_stamp = stamp
        try:
            payload = torch.load(
                self.path, map_location="cpu", weights_only=True
            )
            return self._parse(payload)
        except Exception as err:
            logger.warning(
                "ignoring unreadable text cache %s (%s); texts will be "
                "re-encoded",
                self.path,
                err,
            )
            return {}

    def _parse(self, payload: Any) -> dict[str, Tensor]:
        if not isinstance(payload, dict):
            raise ValueError("not a dict")
        if payload.get("identity") != self.key:
            raise ValueError("written for other weights")
        texts, features = payload.get("texts"), payload.get("features")
        if not isinstance(texts, list) or not isinstance(features, Tensor):
            raise ValueError("missing 'texts' or 'features'")
        if tuple(features.shape) != (len(texts), self.embed_dim):
            raise ValueError(f"features have shape {tuple(features.shape)}")
        return dict(zip(texts, features.float().unbind(0)))

    def write(self, entries: dict[str, Tensor]) -> None:
        """Replace the file with ``entries``, atomically."""
        payload = {
            "identity": self.key,
            "texts": list(entries),
            "features": torch.stack(list(entries.values())),
        }
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(
                dir=self.path.parent, prefix=".tmp-", suffix=".pt"
            )
            os.close(fd)
            try:
                torch.save(payload, tmp)
                os.replace(tmp, self.path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as err:
            logger.warning("could not write text cache %s: %s", self.path, err)
            return
        self._seen_stamp = self._stamp()


# ---------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------


class ClipEncoder:
    """An open_clip model + tokenizer + its own eval preprocess.

    Build one with :func:`create_encoder`, or wrap an already-built open_clip
    model with :meth:`from_open_clip`.

    Attributes:
        model_name: open_clip model name ("ViT-B-32", "hf-hub:...").
        pretrained: the tag, the absolute checkpoint path, or None (random
            weights, or weights named by an ``hf-hub:``/``local-dir:`` name).
        device: where the model runs.
        precision: "fp32", "fp16" or "bf16" (the last two via autocast).
        identity: a stable name for the weights, used as cache key.
        is_random: True for randomly initialised weights.
        preprocess: the model's eval transform, PIL -> Tensor[3, S, S].
        image_size: S.
        preprocess_cfg: size, mean, std, interpolation, resize_mode.
        embed_dim: D, the joint embedding size.
        context_length: the text tower's token budget (77 for CLIP).
        logit_scale: ``exp(model.logit_scale)`` (100 for OpenAI CLIP).
        num_texts_encoded: texts that went through the text tower (cache
            misses), summed over the encoder's life.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable,
        tokenizer: Callable,
        *,
        model_name: str,
        pretrained: str | None,
        device: torch.device,
        precision: str,
        identity: str,
        is_random: bool,
        cache_dir: Path | None,
    ):
        import open_clip

        self.model = model
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.model_name = model_name
        self.pretrained = pretrained
        self.device = device
        self.precision = precision
        self.identity = identity
        self.is_random = is_random
        self.preprocess_cfg = dict(open_clip.get_model_preprocess_cfg(model))
        self.image_size = _square_size(self.preprocess_cfg["size"])
        self.context_length = int(
            getattr(model, "context_length", None) or tokenizer.context_length
        )
        self.logit_scale = float(model.logit_scale.detach().exp().flatten()[0])
        self.num_texts_encoded = 0
        self._text_memory: dict[str, Tensor] = {}
        # Which text path runs (see engine/text_tower.py); checked once
        # against the full context on the first texts encoded.
        self.length_cut, self.text_path = text_tower.cut_support(model, tokenizer)
        self._length_cut_checked = False
        self.embed_dim = self._find_embed_dim()
        self._text_disk = None
        if cache_dir is not None:
            key = f"{identity}|{precision}"
            self._text_disk = _TextCacheFile(cache_dir, key, self.embed_dim)

    @classmethod
    def from_open_clip(
        cls,
        model: torch.nn.Module,
        preprocess: Callable | None = None,
        tokenizer: Callable | None = None,
        *,
        model_name: str,
        pretrained: str | None,
        device: str | torch.device | None = "auto",
        precision: str = "auto",
        cache_dir: str | os.PathLike | None | bool = None,
        identity: str | None = None,
    ) -> ClipEncoder:
        """Wrap an already-built open_clip model.

        Args:
            model: an open_clip ``CLIP``/``CustomTextCLIP``; moved to
                ``device`` and put in eval mode.
            preprocess: its eval transform; None builds it from the model's
                preprocess config.
            tokenizer: its tokenizer; None uses
                ``open_clip.get_tokenizer(model_name)``.
            model_name: the open_clip name the model was built from.
            pretrained: the tag or checkpoint path its weights came from, or
                None for random weights (logged as a warning).
            device: see :func:`resolve_device`.
            precision: see :func:`resolve_precision`.
            cache_dir: text-cache folder; None uses
                :func:`default_text_cache_dir`, False disables the disk
                cache. Random weights are never cached on disk.
            identity: overrides :func:`weights_identity` (for weights the
                name and tag do not describe, e.g. a fine-tuned model).

        Returns:
            The encoder.
        """
        import open_clip

        device = resolve_device(device)
        precision = resolve_precision(precision, device)
        is_random = identity is None and is_random_weights(
            model_name, pretrained
        )
        if pretrained is not None:
            pretrained = os.fspath(pretrained)
        if is_random:
            logger.warning(
                "%s has random weights (pretrained=None): its predictions "
                "are meaningless; use it only to test code paths",
                model_name,
            )
            pretrained = None
        if preprocess is None:
            preprocess = _eval_transform(model)
        if tokenizer is None:
            tokenizer = open_clip.get_tokenizer(model_name)
        return cls(
            model.to(device).eval(),
            preprocess,
            tokenizer,
            model_name=model_name,
            pretrained=pretrained,
            device=device,
            precision=precision,
            identity=identity or weights_identity(model_name, pretrained),
            is_random=is_random,
            cache_dir=None if is_random else _text_cache_dir(cache_dir),
        )

    def __repr__(self) -> str:
        return (
            f"ClipEncoder(model_name={self.model_name!r}, pretrained="
            f"{self.pretrained!r}, device={str(self.device)!r}, "
            f"precision={self.precision!r})"
        )

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(
            device_type=self.device.type,
            dtype=_AUTOCAST_DTYPES[self.precision],
        )

    def _find_embed_dim(self) -> int:
        dim = getattr(getattr(self.model, "visual", None), "output_dim", None)
        if isinstance(dim, int):
            return dim
        # Towers without an ``output_dim`` (some timm/HF ones): measure it.
        return int(self._encode_text_batch([""]).shape[-1])

    def encode_images(self, pixels: Tensor) -> Tensor:
        """Encode preprocessed images.

        Args:
            pixels: Tensor[N, 3, S, S] float, normalised by
                :attr:`preprocess`, on any device. Not chunked: the caller
                picks N.

        Returns:
            Tensor[N, D] float32, L2-normalised, on :attr:`device`.

        Raises:
            ValueError: wrong shape or an integer tensor (unnormalised).
        """
        size = self.image_size
        if (
            not isinstance(pixels, Tensor)
            or pixels.ndim != 4
            or tuple(pixels.shape[1:]) != (3, size, size)
            or not pixels.is_floating_point()
        ):
            got = tuple(pixels.shape) if isinstance(pixels, Tensor) else pixels
            raise ValueError(
                f"pixels must be a float Tensor[N, 3, {size}, {size}] from "
                f"encoder.preprocess; got {got}"
            )
        pixels = pixels.to(self.device, torch.float32, non_blocking=True)
        if pixels.shape[0] == 0:
            return pixels.new_zeros(0, self.embed_dim)
        with torch.no_grad(), self._autocast():
            features = self.model.encode_image(pixels)
        return _l2_normalize(features.float())

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 256
    ) -> Tensor:
        """Encode texts, through the cache.

        Only texts missing from the memory and disk caches are tokenised and
        encoded, once each, in batches of ``batch_size``. Texts longer than
        :attr:`context_length` tokens are truncated by the tokenizer (see
        :meth:`count_truncated`).

        Args:
            texts: N strings; duplicates allowed.
            batch_size: texts per text-tower forward pass.

        Returns:
            Tensor[N, D] float32, L2-normalised, on CPU, in input order.
        """
        texts = _check_texts(texts)
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
        if not texts:
            return torch.zeros(0, self.embed_dim)
        missing = self._missing(texts)
        if missing and self._text_disk is not None:
            self._merge_from_disk()
            missing = self._missing(texts)
        if missing:
            for batch, features in self._encode_missing(missing, batch_size):
                self._text_memory.update(zip(batch, features.unbind(0)))
                self.num_texts_encoded += len(batch)
            self._save_to_disk()
        return torch.stack([self._text_memory[text] for text in texts])

    def _missing(self, texts: list[str]) -> list[str]:
        """Texts not in memory, de-duplicated, first-seen order."""
        memory = self._text_memory
        return list(dict.fromkeys(t for t in texts if t not in memory))

    def _merge_from_disk(self) -> None:
        for text, features in self._text_disk.read_if_changed().items():
            self._text_memory.setdefault(text, features)

    def _save_to_disk(self) -> None:
        if self._text_disk is None:
            return
        # Pick up what another process wrote since our last read, so the
        # rewrite below does not drop it.
        self._merge_from_disk()
        self._text_disk.write(self._text_memory)

    def _encode_text_batch(self, texts: list[str]) -> Tensor:
        """Tensor[N, D] float32, normalised, on CPU; full context, no cache."""
        tokens = self.tokenizer(texts).to(self.device)
        with torch.no_grad(), self._autocast():
            features = self.model.encode_text(tokens)
        return _l2_normalize(features.float()).cpu()

    def _encode_missing(self, texts: list[str], batch_size: int):
        """Yields ``(texts, Tensor[n, D])`` batches covering ``texts``.

        Length-cut path: texts are bucketed by token length and each batch
        runs at its longest text; otherwise batches of the full context.
        """
        if self.length_cut and not self._length_cut_checked:
            self._check_length_cut(texts[:4])
        if not self.length_cut:
            for start in range(0, len(texts), batch_size):
                batch = texts[start : start + batch_size]
                yield batch, self._encode_text_batch(batch)
            return
        tokens = self.tokenizer(texts)
        pool = text_tower._text_parts(self.model)[0]
        lengths = text_tower.end_positions(tokens, pool["pool"], pool["eos_id"]).tolist()
        for positions in text_tower.length_buckets(lengths, batch_size):
            batch_tokens = tokens[positions].to(self.device)
            with torch.no_grad(), self._autocast():
                features = text_tower.encode_cut(self.model, batch_tokens)
            yield [texts[i] for i in positions], _l2_normalize(features.float()).cpu()

    def _check_length_cut(self, texts: list[str]) -> None:
        """Compare the length-cut features with the full context on a few
        texts; a mismatch (a tower this code does not know) turns the cut off."""
        self._length_cut_checked = True
        tokens = self.tokenizer(texts).to(self.device)
        with torch.no_grad(), self._autocast():
            full = _l2_normalize(self.model.encode_text(tokens).float())
            cut = _l2_normalize(text_tower.encode_cut(self.model, tokens).float())
        diff = float((full - cut).abs().max())
        tolerance = 1e-4 if self.precision == "fp32" else 2e-2
        if diff > tolerance:
            self.length_cut = False
            self.text_path = (
                f"{text_tower.FULL}: the length-cut check differed by {diff:.2e} "
                f"(> {tolerance:g}) on this text tower"
            )
            logger.warning("text encoding: %s", self.text_path)
        else:
            logger.info("text encoding: %s (check: max difference %.1e)", self.text_path, diff)

    def count_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` exceed :attr:`context_length` tokens.

        Counts SOT/EOT for open_clip's CLIP BPE tokenizer and the special
        tokens an HF tokenizer adds. Returns 0 for tokenizers it cannot
        measure (logged at debug level).
        """
        texts = _check_texts(texts)
        if not texts:
            return 0
        lengths = _token_lengths(self.tokenizer, texts)
        if lengths is None:
            logger.debug(
                "cannot count truncated texts for tokenizer %s",
                type(self.tokenizer).__name__,
            )
            return 0
        return sum(n > self.context_length for n in lengths)

    def clear_text_cache(self, disk: bool = False) -> None:
        """Forget cached text features (in memory; on disk too if asked)."""
        self._text_memory.clear()
        if disk and self._text_disk is not None:
            self._text_disk.path.unlink(missing_ok=True)
            self._text_disk._seen_stamp = None

    @property
    def text_cache_path(self) -> Path | None:
        """The disk cache file, or None when caching in memory only."""
        return None if self._text_disk is None else self._text_disk.path


def create_encoder(
    model_name: str = defaults.MODEL_NAME,
    pretrained: str | os.PathLike | None = defaults.PRETRAINED,
    *,
    device: str | torch.device | None = "auto",
    precision: str = "auto",
    cache_dir: str | os.PathLike | None | bool = None,
) -> ClipEncoder:
    """Load an open_clip model as a :class:`ClipEncoder`.

    Args:
        model_name: any ``open_clip.list_models()`` name ("ViT-B/32" is
            accepted), ``"hf-hub:org/repo"`` or ``"local-dir:/path"``.
        pretrained: an open_clip tag ("openai", "laion2b_s34b_b88k", ...),
            a local checkpoint file, or None/"none"/"random" for random
            weights (a warning is logged). Ignored for ``hf-hub:`` and
            ``local-dir:`` names, which carry their weights.
        device: see :func:`resolve_device`.
        precision: see :func:`resolve_precision`.
        cache_dir: text-cache folder; None uses
            :func:`default_text_cache_dir`, False disables the disk cache.

    Returns:
        The encoder, in eval mode on ``device``.

    Raises:
        ValueError: unknown model name, device or precision.
        RuntimeError: the weights could not be loaded (unknown tag, missing
            or unsafe file, no network), naming model, tag and reason.

    Example:
        >>> encoder = create_encoder("ViT-B-16", "laion2b_s34b_b88k")
    """
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    model_name = _check_model_name(model_name)
    pretrained = _check_pretrained(model_name, pretrained)
    model, preprocess, tokenizer = _load_open_clip(
        model_name, pretrained, torch_device
    )
    return ClipEncoder.from_open_clip(
        model,
        preprocess,
        tokenizer,
        model_name=model_name,
        pretrained=pretrained,
        device=torch_device,
        precision=precision,
        cache_dir=cache_dir,
    )


# ---------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------


def _l2_normalize(features: Tensor) -> Tensor:
    return features / features.norm(dim=-1, keepdim=True)


def _eval_transform(model: torch.nn.Module) -> Callable:
    """The model's eval transform, as create_model_and_transforms builds it."""
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    cfg = PreprocessCfg(**open_clip.get_model_preprocess_cfg(model))
    return image_transform_v2(cfg, is_train=False)


def _square_size(size: int | Sequence[int]) -> int:
    if isinstance(size, int):
        return size
    height, width = size
    if height != width:
        raise ValueError(f"non-square model input {size} is not supported")
    return int(height)


def _text_cache_dir(cache_dir: str | os.PathLike | None | bool) -> Path | None:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_text_cache_dir()
    return Path(cache_dir).expanduser()


def _check_texts(texts: Sequence[str]) -> list[str]:
    # A bare string is a Sequence too, and would encode one character each.
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise ValueError(
            f"texts must be a list of strings; got {type(texts).__name__}"
        )
    texts = list(texts)
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ValueError(f"texts must be strings; got {bad[:3]!r}")
    return texts


def _token_lengths(tokenizer: Any, texts: list[str]) -> list[int] | None:
    """Untruncated token counts, special tokens included, or None."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        # open_clip's SimpleTokenizer: BPE tokens + SOT + EOT.
        return [len(tokenizer.encode(text)) + 2 for text in texts]
    hf_tokenizer = getattr(tokenizer, "tokenizer", None)
    if callable(hf_tokenizer):
        ids = hf_tokenizer(texts, truncation=False)["input_ids"]
        return [len(row) for row in ids]
    return None

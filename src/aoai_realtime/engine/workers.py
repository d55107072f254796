"""The speech models, shared by every session and run off the event loop.

The models are CPU-bound and not safe to call from two threads at once, so each gets one worker
thread of its own: concurrent sessions queue for a model instead of crashing it, and the event
loop never waits on one. The queue is fair: each session (the :func:`model_owner` of the code
that asks) has a queue of its own and the thread serves them in turn, so a session that asks
for many replies at once delays another session's next job by at most the one running. Work done
ahead of need (a transcription or reply prepared during a pause, see ``engine/speculation.py``)
is marked :class:`WorkPriority` and served after every other waiting job, until it is known to
be the turn's. Streams (LLM tokens, TTS audio) are produced in the worker thread and handed to
the loop as they come, so the first sentence is spoken while the rest is generated.

One :class:`SharedSpeech` exists per loaded :class:`SpeechStack` (see :meth:`for_stack`), so
several engines in one process (tests, the middle tier) share the same queues.
"""

from __future__ import annotations

import asyncio
import atexit
import contextvars
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

LLM_MAX_AHEAD = 3
"""The model pauses when this many text pieces wait unread: a consumer that stops reading (to
let the first sentence be synthesized at full speed) stops the model using the CPU."""

_OWNER: contextvars.ContextVar[object] = contextvars.ContextVar("model_owner", default=None)


def model_owner(owner: object) -> None:
    """Name whose model work the current task (and the tasks it starts) asks for: one session.
    Jobs of different owners are served in turn (see :class:`FairExecutor`)."""
    _OWNER.set(owner)


class WorkPriority:
    """Marks model work done ahead of need: while ``speculative``, its jobs wait until no other
    job does. Set ``speculative = False`` when the work turns out to be the turn's (jobs already
    queued move up too)."""

    def __init__(self) -> None:
        self.speculative = True


_PRIORITY: contextvars.ContextVar[WorkPriority | None] = contextvars.ContextVar(
    "model_priority", default=None
)


def speculative_context(priority: WorkPriority) -> contextvars.Context:
    """A copy of the current context whose model work has ``priority`` (run tasks in it)."""
    context = contextvars.copy_context()
    context.run(_PRIORITY.set, priority)
    return context


def speculative_task(
    coro: Any, priority: WorkPriority, name: str | None = None
) -> asyncio.Task[Any]:
    """Run ``coro`` as a task of the running loop whose model work has ``priority``."""
    loop = asyncio.get_running_loop()
    return loop.create_task(coro, name=name, context=speculative_context(priority))


_Job = tuple[Future[Any], Callable[[], Any], WorkPriority | None]


def _later(job: _Job) -> bool:
    return job[2] is not None and job[2].speculative


class FairExecutor(Executor):
    """One worker thread serving a queue per owner, round-robin (owner: :func:`model_owner` at
    ``submit``). Within one owner, jobs run in the order they came. An owner whose next job is
    speculative (:class:`WorkPriority`) is passed over while another owner's is not."""

    def __init__(self, name: str) -> None:
        self._ready = threading.Condition()
        self._queues: OrderedDict[object, deque[_Job]] = OrderedDict()
        self._running: tuple[object, deque[_Job]] | None = None
        self._shutdown = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()
        _LIVE.add(self)

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        owner = _OWNER.get()
        with self._ready:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            queue = self._queues.get(owner)
            if queue is None:
                if self._running is not None and self._running[0] == owner:
                    queue = self._running[1]  # its turn comes again after the others'
                else:
                    queue = self._queues[owner] = deque()
            queue.append((future, lambda: fn(*args, **kwargs), _PRIORITY.get()))
            self._ready.notify()
        return future

    @property
    def waiting(self) -> bool:
        """Whether a job waits for the thread."""
        return bool(self._queues)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._queues and not self._shutdown:
                    self._ready.wait()
                if not self._queues:
                    return
                owner = next(
                    (o for o, q in self._queues.items() if not _later(q[0])),
                    next(iter(self._queues)),
                )
                queue = self._queues.pop(owner)
                future, job, _priority = queue.popleft()
                # While its job runs the owner is out of the rotation: an owner that asks
                # meanwhile is served before its next job.
                self._running = (owner, queue)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(job())
                except BaseException as exc:  # noqa: BLE001 - handed to whoever waits
                    future.set_exception(exc)
            del future, job, _priority  # hold nothing of a finished job while waiting
            with self._ready:
                self._running = None
                if queue:
                    self._queues[owner] = queue
            del owner, queue

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._ready:
            self._shutdown = True
            if cancel_futures:
                queues = list(self._queues.values())
                if self._running is not None:
                    queues.append(self._running[1])
                for queue in queues:
                    for future, _, _ in queue:
                        future.cancel()
                    queue.clear()
                self._queues.clear()
            self._ready.notify_all()
        if wait and self._thread is not threading.current_thread():
            self._thread.join()


_LIVE: weakref.WeakSet[FairExecutor] = weakref.WeakSet()


@atexit.register
def _stop_at_exit() -> None:
    """At exit, as for a ``ThreadPoolExecutor``: queued jobs are dropped, a running one ends,
    so no model call is cut off while the interpreter is torn down."""
    for pool in list(_LIVE):
        pool.shutdown(wait=True, cancel_futures=True)


_REGISTRY: dict[int, SharedSpeech] = {}
_REGISTRY_LOCK = threading.Lock()


class SharedSpeech:
    """Async access to a loaded speech stack (VAD, STT, TTS, LLM), one queue per model."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self._stt = FairExecutor("engine-stt")
        self._tts = FairExecutor("engine-tts")
        self._llm = FairExecutor("engine-llm")
        # VAD state is per session (one TurnDetector each), so two sessions may run at once.
        self._vad = ThreadPoolExecutor(2, thread_name_prefix="engine-vad")

    @classmethod
    def for_stack(cls, stack: Any) -> SharedSpeech:
        """The one SharedSpeech of ``stack`` (created on first use)."""
        with _REGISTRY_LOCK:
            shared = _REGISTRY.get(id(stack))
            if shared is None or shared.stack is not stack:
                shared = cls(stack)
                _REGISTRY[id(stack)] = shared
            return shared

    # ------------------------------------------------------------------ models

    @property
    def transcriber(self) -> Any:
        return _attr(self.stack, "transcriber", "stt")

    @property
    def synthesizer(self) -> Any:
        return _attr(self.stack, "synthesizer", "tts")

    @property
    def llm(self) -> Any:
        return _attr(self.stack, "llm", "language_model", "lm")

    # ------------------------------------------------------------------ VAD

    def turn_detector(
        self,
        *,
        threshold: float = 0.5,
        prefix_padding_ms: int = 300,
        silence_duration_ms: int = 500,
        eagerness: str | None = None,
    ) -> Any:
        """A new turn detector (with a speech detector of its own) for one session; under
        ``semantic_vad`` it judges pauses on the words, which the session hears for it."""
        return self.stack.new_turn_detector(
            threshold=threshold,
            prefix_padding_ms=prefix_padding_ms,
            silence_duration_ms=silence_duration_ms,
            eagerness=eagerness,
            hears_words=eagerness is not None,
        )

    async def feed(self, turn_detector: Any, pcm16_24k: bytes) -> list[Any]:
        """Feed audio to a session's turn detector; returns its turn events."""
        loop = asyncio.get_running_loop()
        result: list[Any] = await loop.run_in_executor(self._vad, turn_detector.feed, pcm16_24k)
        return result

    async def resume(self, turn_detector: Any, ending: Any) -> list[Any]:
        """Give a turn detector the judgement its pause awaits; returns its turn events."""
        loop = asyncio.get_running_loop()
        result: list[Any] = await loop.run_in_executor(self._vad, turn_detector.resume, ending)
        return result

    # ------------------------------------------------------------------ STT

    async def transcribe(
        self, pcm16_24k: bytes, language: str | None = None, prompt: str | None = None
    ) -> str:
        return (await self.hear(pcm16_24k, language, prompt, ending=False)).text

    async def hear(
        self,
        pcm16_24k: bytes,
        language: str | None = None,
        prompt: str | None = None,
        *,
        ending: bool = True,
    ) -> Any:
        """The transcription with how it ends if ``ending`` (:class:`~.speech.stt.Heard`)."""
        loop = asyncio.get_running_loop()
        stt = self.transcriber
        return await loop.run_in_executor(
            self._stt,
            lambda: stt.hear(pcm16_24k, language=language, prompt=prompt, ending=ending),
        )

    # ------------------------------------------------------------------ TTS

    def synthesize(
        self, text: str, voice: str = "alloy", speed: float = 1.0
    ) -> AsyncIterator[bytes]:
        """24 kHz PCM16 chunks of ``text`` spoken, as the synthesizer makes them."""
        tts = self.synthesizer
        return _stream_in(self._tts, lambda: tts.synthesize(text, voice=voice, speed=speed))

    def synthesize_blocking(
        self, text: str, voice: str = "alloy", speed: float = 1.0, *, steady: bool = False
    ) -> bytes:
        """All of ``text`` spoken, from any thread (test speech, benchmarks); ``steady`` as
        in the synthesizer's ``synthesize`` (the same samples for the same text)."""
        tts = self.synthesizer
        return self._tts.submit(
            lambda: b"".join(tts.synthesize(text, voice=voice, speed=speed, steady=steady))
        ).result()

    # ------------------------------------------------------------------ LLM

    def stream_reply(
        self,
        messages: list[dict[str, Any]],
        max_tokens: int,
        temperature: float,
        stop: list[str] | None = None,
        **options: Any,
    ) -> AsyncIterator[str]:
        """Text pieces of the local model's reply; one generation at a time across sessions.
        ``options`` go to the model's ``stream_reply`` (``grammar``, ``examples``)."""
        llm = self.llm
        return _stream_in(
            self._llm,
            lambda: llm.stream_reply(
                messages, max_tokens=max_tokens, temperature=temperature, stop=stop, **options
            ),
            max_ahead=LLM_MAX_AHEAD,
        )

    async def prefill(self, messages: list[dict[str, Any]], max_tokens: int) -> None:
        """The local model reads ``messages`` into its cache (see its ``prefill``)."""
        loop = asyncio.get_running_loop()
        llm = self.llm
        await loop.run_in_executor(self._llm, lambda: llm.prefill(messages, max_tokens))

    async def score_contexts(self, contexts: list[str], text: str) -> list[Any]:
        """Per-token log-probabilities of ``text`` after each context (choosing a tool)."""
        loop = asyncio.get_running_loop()
        result: list[Any] = await loop.run_in_executor(
            self._llm, lambda: self._context_scorer().score(contexts, text)
        )
        return result

    async def score_options(self, context: str, options: list[str]) -> list[Any]:
        """Per-token log-probabilities of each option after ``context`` (a tool's arguments)."""
        loop = asyncio.get_running_loop()
        result: list[Any] = await loop.run_in_executor(
            self._llm, lambda: self._context_scorer().score_options(context, options)
        )
        return result

    def _context_scorer(self) -> Any:
        """The model's :class:`~.speech.llm.ContextScorer`, made on first use (LLM thread)."""
        scorer = getattr(self, "_scorer", None)
        if scorer is None:
            from .speech.llm import ContextScorer

            scorer = self._scorer = ContextScorer(self.llm)
        return scorer

    async def complete_json(self, messages: list[dict[str, Any]], schema: dict[str, Any]) -> str:
        """The local model's JSON reply under ``schema``'s grammar (a tool call's arguments)."""
        llm = self.llm
        loop = asyncio.get_running_loop()
        text: str = await loop.run_in_executor(
            self._llm, lambda: llm.complete_json(messages, schema)
        )
        return text

    async def count_tokens(self, text: str) -> int:
        llm = self.llm
        loop = asyncio.get_running_loop()
        n: int = await loop.run_in_executor(self._llm, llm.count_tokens, text)
        return n


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value
    raise AttributeError(f"the speech stack has none of {', '.join(names)}")


_DONE = object()


async def _stream_in(
    pool: Executor, make: Callable[[], Iterator[T]], max_ahead: int | None = None
) -> AsyncIterator[T]:
    """Run an iterator in ``pool``'s thread and yield its items on the loop as they come.

    With ``max_ahead`` the thread waits while that many items are unread (backpressure), unless
    another job waits for ``pool`` (a :class:`FairExecutor`): then it finishes at full speed.
    Closing the async iterator (or cancelling its consumer) stops the thread at its next item.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
    stop = threading.Event()
    room = threading.Semaphore(max_ahead) if max_ahead else None

    def put(item: Any, exc: BaseException | None = None) -> None:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, (item, exc))
        except RuntimeError:  # the loop is gone: nobody is listening any more
            stop.set()

    def work() -> None:
        if stop.is_set():
            put(_DONE)
            return
        try:
            it = make()
            try:
                throttle = room is not None
                for item in it:
                    while throttle and room is not None and not room.acquire(timeout=0.05):
                        if stop.is_set():
                            break
                        if getattr(pool, "waiting", False):
                            # another session waits for this thread: finish without pausing
                            throttle = False
                    if stop.is_set():
                        break
                    put(item)
            finally:
                close = getattr(it, "close", None)
                if callable(close):
                    close()
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put(_DONE, exc)
            return
        put(_DONE)

    loop.run_in_executor(pool, work)
    try:
        while True:
            item, exc = await queue.get()
            if item is _DONE:
                if exc is not None:
                    raise exc
                return
            if room is not None:
                room.release()
            yield item
    finally:
        stop.set()
        if room is not None:
            room.release()
